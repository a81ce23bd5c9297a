"""Pure parsers of what Slurm's commands print: squeue, scontrol, sinfo, sacct, and our exit file.

Every parser takes the text a command printed and returns plain data; nothing here runs a
command, so each one is tested on output captured from a real cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# squeue -O: each field gets a "|" suffix. No width means "at least 20", which never truncates;
# Reason comes last, being the only free-text field.
SQUEUE_FIELDS = ("JobID", "State", "NodeList", "exit_code", "TimeLimit", "Reason")
SQUEUE_FORMAT = ",".join(f"{name}:|" for name in SQUEUE_FIELDS)
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Reason"
EMPTY = frozenset({"", "(null)", "None", "N/A", "None assigned"})


@dataclass(frozen=True)
class SlurmJob:
    """One job as Slurm reports it. ``exit_code``/``signal`` follow Slurm's ``ExitCode=code:signal``."""

    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    exit_code: int | None = None
    signal: int | None = None
    time_limit: str = ""
    cancelled_by: str = ""  # sacct says "CANCELLED by <uid>"


@dataclass(frozen=True)
class ExitRecord:
    """What the job's wrapper wrote to its ``exit`` file: the program's status, or why it never ran."""

    code: int | None
    failure: str = ""


def _clean(value: str) -> str:
    value = value.strip()
    return "" if value in EMPTY else value


def _wait_status(raw: str) -> tuple[int | None, int | None]:
    """squeue's exit_code is a raw wait status: (exit code, signal)."""
    try:
        status = int(raw)
    except ValueError:
        return None, None
    if status & 0x7F:
        return None, status & 0x7F
    return (status >> 8) & 0xFF, None


def _exit_pair(text: str) -> tuple[int | None, int | None]:
    """``ExitCode=a:b`` of scontrol and sacct: (exit code, signal or None)."""
    code, _, sig = text.partition(":")
    try:
        signal = int(sig) if sig else 0
        return (None, signal) if signal else (int(code), None)
    except ValueError:
        return None, None


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """``squeue -h -O SQUEUE_FORMAT``: job id -> job."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.removesuffix("|").split("|", len(SQUEUE_FIELDS) - 1)
        if len(parts) != len(SQUEUE_FIELDS):
            continue
        job_id, state, nodes, status, limit, reason = (part.strip() for part in parts)
        code, sig = _wait_status(status)
        jobs[job_id] = SlurmJob(job_id, state.split()[0] if state else "", _clean(reason), _clean(nodes),
                                code, sig, _clean(limit))
    return jobs


# Keys whose values are free text (they may hold spaces, even "Word=" pieces).
FREE_TEXT_KEYS = frozenset({"JobName", "Reason", "Command", "WorkDir", "StdErr", "StdIn", "StdOut", "Comment",
                            "AdminComment", "Dependency", "SystemComment"})
# Keys `scontrol show job -o` prints (22.05); only these may end a free-text value.
JOB_KEYS = frozenset({
    "JobId", "JobName", "UserId", "GroupId", "MCS_label", "Priority", "Nice", "Account", "QOS", "JobState", "Reason",
    "Dependency", "Requeue", "Restarts", "BatchFlag", "Reboot", "ExitCode", "DerivedExitCode", "RunTime", "TimeLimit",
    "TimeMin", "SubmitTime", "EligibleTime", "AccrueTime", "StartTime", "EndTime", "Deadline", "SuspendTime",
    "SecsPreSuspend", "LastSchedEval", "Scheduler", "Partition", "AllocNode:Sid", "ReqNodeList", "ExcNodeList",
    "NodeList", "BatchHost", "NumNodes", "NumCPUs", "NumTasks", "CPUs/Task", "ReqB:S:C:T", "TRES", "Socks/Node",
    "NtasksPerN:B:S:C", "CoreSpec", "MinCPUsNode", "MinMemoryNode", "MinMemoryCPU", "MinTmpDiskNode", "Features",
    "DelayBoot", "OverSubscribe", "Contiguous", "Licenses", "Network", "Command", "WorkDir", "StdErr", "StdIn",
    "StdOut", "Power", "Comment", "AdminComment", "SystemComment", "MailUser", "MailType", "Container",
    "ContainerID", "ArrayJobId", "ArrayTaskId", "HetJobId", "HetJobOffset", "Nodes", "CPU_IDs", "Mem", "GRES",
    "TresPerNode", "TresPerTask", "KillOInInvalidDependent", "Cluster", "ClusterFeatures", "OverTimeLimit",
})
_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9_/:]*)=")


def parse_key_values(line: str) -> dict[str, str]:
    """One ``scontrol show ... -o`` line as a dict; values with spaces stay whole."""
    result: dict[str, str] = {}
    key = ""
    for token in line.strip().split(" "):
        match = _KEY.match(token)
        # Inside a free-text value only a known key starts the next field.
        if match and (key not in FREE_TEXT_KEYS or match.group(1) in JOB_KEYS):
            key = match.group(1)
            result[key] = token[match.end():]
        elif key:
            result[key] += " " + token
    return result


def parse_scontrol_job(text: str) -> SlurmJob | None:
    """``scontrol show job -o ID``; None when it printed no job."""
    fields = parse_key_values(text.strip().splitlines()[0]) if text.strip() else {}
    if "JobId" not in fields:
        return None
    code, sig = _exit_pair(fields.get("ExitCode", ""))
    state = fields.get("JobState", "")
    return SlurmJob(fields["JobId"], state, _clean(fields.get("Reason", "")), _clean(fields.get("NodeList", "")),
                    code, sig, _clean(fields.get("TimeLimit", "")))


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """``sacct -n -P -X -o SACCT_FIELDS``: job id -> job (State may read "CANCELLED by 1005")."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        job_id, state, exit_code, nodes, reason = parts[:5]
        base, _, by = state.partition(" by ")
        code, sig = _exit_pair(exit_code)
        jobs[job_id] = SlurmJob(job_id, base.strip(), _clean(reason), _clean(nodes), code, sig,
                                cancelled_by=by.strip())
    return jobs


def parse_exit_file(text: str) -> ExitRecord | None:
    """The wrapper's ``exit`` file: ``<code>``, or ``failed`` and a message on the next line."""
    lines = text.splitlines()
    if not lines:
        return None
    if lines[0] == "failed":
        return ExitRecord(None, "\n".join(lines[1:]).strip() or "the job could not start")
    try:
        return ExitRecord(int(lines[0]))
    except ValueError:
        return None


def parse_duration(text: str) -> int | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (or ``minutes:seconds``, ``minutes``) in seconds; None = no limit."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", "") or text in EMPTY:
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        seconds = parts[0] * 60  # a bare number is minutes
    elif len(parts) == 2:
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return seconds + (int(days) * 86400 if days else 0)


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_time_s: int | None  # None: unlimited
    max_mem_per_node: int | None  # MB; None: unlimited
    max_cpus_per_node: int | None
    state: str


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    features: tuple[str, ...]
    partitions: tuple[str, ...]


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_partitions(text: str) -> list[Partition]:
    """``scontrol show partition -o``."""
    result = []
    for line in text.splitlines():
        fields = parse_key_values(line)
        if "PartitionName" not in fields:
            continue
        result.append(Partition(
            name=fields["PartitionName"],
            default=fields.get("Default") == "YES",
            max_time_s=parse_duration(fields.get("MaxTime", "")),
            max_mem_per_node=_number(fields.get("MaxMemPerNode", "")),
            max_cpus_per_node=_number(fields.get("MaxCPUsPerNode", "")),
            state=fields.get("State", ""),
        ))
    return result


def parse_nodes(text: str) -> list[Node]:
    """``sinfo -h -N -o "%N|%c|%m|%f|%P"``: one line per node and partition, merged per node."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[0]:
            continue
        name, cpus, memory, features, partition = parts
        known = nodes.get(name)
        partitions = (*known.partitions, partition.rstrip("*")) if known else (partition.rstrip("*"),)
        feature_list = tuple(f for f in features.split(",") if f and f != "(null)")
        nodes[name] = Node(name, _number(cpus.rstrip("+")) or 0, _number(memory.rstrip("+")) or 0,
                           feature_list, partitions)
    return list(nodes.values())


SINFO_FORMAT = "%N|%c|%m|%f|%P"
