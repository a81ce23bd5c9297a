"""Slurm's job states as the Launcher's statuses: one pure function, ``map_state``.

| Slurm | status |
|---|---|
| PENDING (and requeued / held) | Pending, Slurm's reason as statusMessage |
| RUNNING, COMPLETING, CONFIGURING, ... | Running |
| SUSPENDED, STOPPED | Suspended |
| COMPLETED, FAILED | Finished + exitCode; Failed when the program never ran |
| CANCELLED | Canceled before it started; else as the program ended (Finished, or Killed by SIGKILL) |
| TIMEOUT, OUT_OF_MEMORY, PREEMPTED | Killed, with the reason |
| NODE_FAIL, BOOT_FAIL | Failed |

The program's own status comes from the wrapper's exit file when there is one, else from Slurm's
``ExitCode``. The wrapper is a shell, which reports a death by signal N as 128+N: those codes are
read as signals, as the Local cluster reports them (SIGKILL: Killed; others: Finished 128+N).
"""

from __future__ import annotations

import signal

from openworkbench.clusters.base import JobState
from openworkbench.clusters.slurm.parse import ExitRecord, SlurmJob, parse_duration

PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT", "POWER_UP_NODE"})
SUSPENDED = frozenset({"SUSPENDED", "STOPPED"})
ACTIVE_STATES = PENDING | RUNNING | SUSPENDED
NODE_FAILURES = {"NODE_FAIL": "a node of the job failed", "BOOT_FAIL": "its node failed to boot"}


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def program_status(job: SlurmJob, record: ExitRecord | None) -> tuple[int | None, int | None]:
    """(exit code, signal) of the program: the exit file first, then Slurm's ExitCode."""
    code, sig = (record.code, None) if record is not None and record.code is not None else (job.exit_code, job.signal)
    if sig is None and code is not None and 128 < code <= 128 + 64:
        sig = code - 128  # a shell's report of a death by signal
    return code, sig


def ended(code: int | None, sig: int | None, note: str = "") -> JobState:
    """The final state of a program that ran: Finished with its code, or Killed when SIGKILL ended it."""
    def message(text: str) -> str:
        return f"{note}: {text[0].lower()}{text[1:]}" if note and text else (note or text)

    if sig == signal.SIGKILL:
        return JobState("Killed", message("Killed by SIGKILL"), exit_code=137)
    if sig == signal.SIGXFSZ:  # from the wrapper's ulimit -f (clusters.<name>.max_file_size_mb)
        return JobState("Finished", message("Terminated by SIGXFSZ: a file it wrote reached the file size limit"),
                        exit_code=128 + sig)
    if sig:
        return JobState("Finished", message(f"Terminated by {_signal_name(sig)}"), exit_code=128 + sig)
    return JobState("Finished", note, exit_code=code if code is not None else 0)


def _killed(reason: str, job: SlurmJob, record: ExitRecord | None) -> JobState:
    code, sig = program_status(job, record)
    return JobState("Killed", reason, exit_code=128 + sig if sig else code)


def map_state(job: SlurmJob, record: ExitRecord | None, started: bool) -> JobState | None:
    """The Launcher status of ``job``; None for a state we do not know (leave the job as it is).

    ``started`` says the job was seen running before; a node list or an exit file say so too.
    """
    state = _status(job, record, started)
    if state is not None and job.nodes and job.state not in PENDING:
        state.host = job.nodes  # also for a job that ended between two polls
    return state


def _status(job: SlurmJob, record: ExitRecord | None, started: bool) -> JobState | None:
    ran = started or record is not None or (bool(job.nodes) and job.state not in PENDING)
    state = job.state
    if state in PENDING:
        return JobState("Pending", job.reason)
    if state in RUNNING:
        return JobState("Running")
    if state in SUSPENDED:
        return JobState("Suspended", "Suspended by Slurm")
    if record is not None and record.failure:
        return JobState("Failed", record.failure)
    if state == "COMPLETED":
        return ended(*program_status(job, record))
    if state == "FAILED":
        if not ran:
            return JobState("Failed", f"Slurm could not start the job: {job.reason or 'FAILED'}")
        return ended(*program_status(job, record))
    if state in ("CANCELLED", "DEADLINE", "REVOKED"):
        return _cancelled(job, record, ran)
    if state == "TIMEOUT":
        return _killed(f"Killed: exceeded its time limit{_limit_text(job.time_limit)}", job, record)
    if state == "OUT_OF_MEMORY":
        return _killed("Killed: exceeded its memory limit (Slurm OUT_OF_MEMORY)", job, record)
    if state == "PREEMPTED":
        return _killed("Killed: preempted by Slurm", job, record)
    if state in NODE_FAILURES:
        return JobState("Failed", f"Slurm {state}: {NODE_FAILURES[state]}")
    if state == "SPECIAL_EXIT":
        return JobState("Failed", f"Slurm SPECIAL_EXIT: {job.reason or 'held for requeue'}")
    return None


def _limit_text(time_limit: str) -> str:
    try:
        seconds = parse_duration(time_limit)
    except ValueError:
        seconds = None
    if seconds is None:
        return ""
    return f" of {seconds // 60} min" if seconds % 60 == 0 else f" of {seconds} s"


def _cancelled(job: SlurmJob, record: ExitRecord | None, ran: bool) -> JobState:
    by = f" by uid {job.cancelled_by}" if job.cancelled_by else ""
    why = "Deadline reached in Slurm" if job.state == "DEADLINE" else f"Cancelled in Slurm{by}"
    if not ran:
        return JobState("Canceled", f"{why} before it started")
    code, sig = program_status(job, record)
    if code is None and sig is None:
        return JobState("Killed", why)
    return ended(code, sig, why)


def from_exit_file(record: ExitRecord) -> JobState:
    """A job Slurm no longer knows: its wrapper's record is all there is."""
    if record.failure:
        return JobState("Failed", record.failure)
    return ended(*program_status(SlurmJob("", ""), record))
