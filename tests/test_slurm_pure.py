"""The Slurm backend's pure parts: the sbatch argv and batch script, the parsers, the state mapping.

Parser inputs are real output of Slurm 22.05 (captured from the test cluster of scripts/slurm-test-cluster.sh).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from openworkbench.clusters.base import Account, JobRef
from openworkbench.clusters.slurm import SlurmCluster
from openworkbench.clusters.slurm.commands import Result, as_user, slurm_message
from openworkbench.clusters.slurm.info import ClusterInfo, check_spec, describe_slurm
from openworkbench.clusters.slurm.parse import (
    ExitRecord,
    SlurmJob,
    parse_duration,
    parse_exit_file,
    parse_key_values,
    parse_nodes,
    parse_partitions,
    parse_sacct,
    parse_scontrol_job,
    parse_squeue,
)
from openworkbench.clusters.slurm.script import (
    FORCE_SIGNAL,
    JobPaths,
    Request,
    env_file,
    job_name,
    job_paths,
    render_script,
    sbatch_argv,
    slurm_request,
)
from openworkbench.clusters.slurm.states import from_exit_file, map_state
from openworkbench.config import ClusterSettings, LimitSettings
from openworkbench.errors import ConfigError, InvalidParameter, LaunchFailed
from openworkbench.models import JobSpec

ACCOUNT = Account("alice", 1005, 1005, (1005,), "/home/alice", "/bin/bash")
SETTINGS = ClusterSettings(type="Slurm", output_dir="/shared/owb")

# squeue -h --states=all -j ... -O "JobID:|,State:|,NodeList:|,exit_code:|,TimeLimit:|,Reason:|"
SQUEUE = """\
241|CANCELLED||0|1:00:00|Priority|
234|COMPLETED|vm|0|1:00:00|None|
235|FAILED|vm|768|1:00:00|NonZeroExitCode|
236|FAILED|vm|9|1:00:00|JobLaunchFailure|
238|PENDING||0|1:00:00|Resources|
239|PENDING||0|1:00:00|JobHeldUser|
237|RUNNING|vm|0|1:00:00|None|
231|SUSPENDED|vm|0|1:00:00|None|
233|TIMEOUT|vm|15|1:00|TimeLimit|
15|CANCELLED|vm|36608|1:00:00|None|
"""
SCONTROL_PENDING = (
    "JobId=238 JobName=wrap UserId=owbexp(1005) GroupId=owbexp(1005) MCS_label=N/A Priority=4294901524 Nice=0 "
    "Account=(null) QOS=(null) JobState=PENDING Reason=Resources Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 "
    "Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2026-11-28T18:59:18 "
    "EligibleTime=2026-11-28T18:59:18 AccrueTime=2026-11-28T18:59:18 StartTime=2026-11-28T21:00:00 "
    "EndTime=2026-11-28T22:00:00 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-28T18:59:22 "
    "Scheduler=Main Partition=main AllocNode:Sid=localhost:7788 ReqNodeList=(null) ExcNodeList=(null) NodeList= "
    "SchedNodeList=vm NumNodes=1 NumCPUs=2 NumTasks=1 CPUs/Task=2 ReqB:S:C:T=0:0:*:* TRES=cpu=2,mem=300M,node=1,"
    "billing=2 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=2 MinMemoryNode=300M MinTmpDiskNode=0 "
    "Features=fast&owbtest DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) "
    "Command=(null) WorkDir=/tmp/owbx StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power= \n"
)
SCONTROL_HELD_ODD_NAME = (
    "JobId=239 JobName=name with B=1 spaces UserId=owbexp(1005) GroupId=owbexp(1005) MCS_label=N/A Priority=0 "
    "Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=01:00:00 TimeMin=N/A NodeList= NumNodes=1 "
    "Command=/tmp/my dir/job.sh WorkDir=/tmp/my dir StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power= \n"
)
SCONTROL_TIMEOUT = (
    "JobId=233 JobName=wrap UserId=owbexp(1005) GroupId=owbexp(1005) MCS_label=N/A Priority=4294901529 Nice=0 "
    "Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 "
    "Reboot=0 ExitCode=0:15 RunTime=00:01:01 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=2026-11-28T18:59:18 "
    "StartTime=2026-11-28T18:59:19 EndTime=2026-11-28T19:00:20 Partition=short NodeList=vm BatchHost=vm NumNodes=1 "
    "NumCPUs=1 NumTasks=1 CPUs/Task=1 Features=(null) Command=(null) WorkDir=/tmp/owbx StdErr=/dev/null "
    "StdIn=/dev/null StdOut=/dev/null Power= \n"
)
SCONTROL_CANCELLED_RUNNING = (
    "JobId=10 JobName=trap.sh UserId=owbexp(1005) GroupId=owbexp(1005) JobState=CANCELLED Reason=None "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=7:0 RunTime=00:00:02 TimeLimit=01:00:00 "
    "NodeList=vm BatchHost=vm Command=/tmp/owbx/trap.sh WorkDir=/tmp/owbx StdErr=/tmp/owbx/k10.out Power= \n"
)
# scontrol show partition -o
PARTITIONS = (
    "PartitionName=main AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=01:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 "
    "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 "
    "SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=2,mem=24105M,node=1,billing=2\n"
    "PartitionName=short AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=00:05:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 "
    "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 "
    "SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=2,mem=24105M,node=1,billing=2\n"
)
# sinfo -h -N -o "%N|%c|%m|%f|%P"
SINFO = "vm|2|24105|owbtest,fast|main*\nvm|2|24105|owbtest,fast|short\n"
INFO = ClusterInfo(tuple(parse_partitions(PARTITIONS)), tuple(parse_nodes(SINFO)))


def spec(**fields: Any) -> JobSpec:
    fields.setdefault("name", "job")
    if "exe" not in fields:
        fields.setdefault("command", "true")
    return JobSpec.model_validate(fields)


# -- sbatch's argv ---------------------------------------------------------------------------------------------
def test_sbatch_argv_maps_every_field() -> None:
    # The API refuses a newline in a name; a job built otherwise (model_copy skips validation) still gets one line.
    job = spec(name="fit model", working_directory="~/proj", queues=["main", "short"],
               resource_limits=[{"type": "cpuCount", "value": "2"}, {"type": "memory", "value": "300.5"},
                                {"type": "cpuTime", "value": "61"}],
               placement_constraints=[{"name": "fast", "value": ""}, {"name": "owbtest", "value": "x"}])
    job = job.model_copy(update={"name": "fit\nmodel"})
    paths = job_paths("/shared/owb/", "abc")
    argv = sbatch_argv("abc", job, ACCOUNT, paths, slurm_request(job, SETTINGS))
    assert argv == [
        "--parsable", "--job-name=fit model", "--comment=openworkbench:abc",
        "--output=/shared/owb/abc/stdout", "--error=/shared/owb/abc/stderr", "--chdir=/home/alice/proj",
        "--export=NIL", "--export-file=/shared/owb/abc/env", "--partition=main,short", "--cpus-per-task=2",
        "--mem=301", "--time=2", "--constraint=fast&owbtest", "/shared/owb/abc/job.sh",
    ]


@pytest.mark.parametrize(("seconds", "minutes"), [("1", 1), ("60", 1), ("61", 2), ("3600", 60), ("0.5", 1)])
def test_cpu_time_becomes_whole_minutes_of_wall_time(seconds: str, minutes: int) -> None:
    job = spec(resource_limits=[{"type": "cpuTime", "value": seconds}])
    assert slurm_request(job, SETTINGS).time_minutes == minutes


def test_defaults_come_from_the_config_and_nothing_given_means_no_option() -> None:
    settings = ClusterSettings(type="Slurm", output_dir="/o", limits={"memory": LimitSettings(default=512)})
    assert slurm_request(spec(), settings) == Request(memory_mb=512)
    argv = sbatch_argv("j", spec(), ACCOUNT, job_paths("/o", "j"), slurm_request(spec(), SETTINGS))
    assert "--chdir=/home/alice" in argv
    assert not [a for a in argv if a.split("=")[0] in ("--partition", "--mem", "--time", "--cpus-per-task")]


def test_job_name_is_one_line() -> None:
    assert job_name(spec().model_copy(update={"name": "a\tb\r\nc" + "x" * 300})) == "a b  c" + "x" * 194


# -- the environment file ----------------------------------------------------------------------------------------
def test_env_file_is_the_clean_login_environment_plus_the_job_s_own() -> None:
    job = spec(environment=[{"name": "CSV", "value": "a,b"}, {"name": "TEXT", "value": "line1\nline2"},
                            {"name": "PATH", "value": "/opt/bin"}])
    entries = env_file(job, ACCOUNT).split(b"\0")
    assert entries[-1] == b""
    env = dict(entry.decode().split("=", 1) for entry in entries[:-1])
    assert env == {"HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice", "SHELL": "/bin/bash",
                   "PATH": "/opt/bin", "LANG": env["LANG"], "CSV": "a,b", "TEXT": "line1\nline2"}


# -- the batch script, run for real with bash (no Slurm needed) ----------------------------------------------
HOSTILE = "it's \"quoted\" $(touch /tmp/owb-pwned) `id` ; rm -rf / \\ \n new line"


def write_script(tmp_path: Path, job: JobSpec) -> JobPaths:
    workdir = tmp_path / "work dir 'x'"
    workdir.mkdir(exist_ok=True)
    paths = job_paths(str(tmp_path / "out"), "j1")
    os.makedirs(f"{paths.dir}/status")
    account = Account("alice", os.getuid(), os.getgid(), (), str(workdir), "/bin/sh")
    Path(paths.script).write_text(render_script("j1", job, account, paths))
    if job.stdin:
        Path(paths.stdin).write_text(job.stdin)
    return paths


def run_script(tmp_path: Path, job: JobSpec) -> tuple[str, str, str]:
    paths = write_script(tmp_path, job)
    env = {**os.environ, **{v.name: v.value for v in job.environment}}
    done = subprocess.run(["bash", paths.script], capture_output=True, text=True, env=env, timeout=20, check=False)
    record = Path(paths.exit).read_text() if Path(paths.exit).exists() else ""
    assert done.returncode == (int(record.split()[0]) if record.split()[0].isdigit() else 127)
    return done.stdout, done.stderr, record


def test_script_quotes_hostile_values_and_records_the_exit_code(tmp_path: Path) -> None:
    job = spec(command='printf "%s|" "$0" "$1" "$HOSTILE"; pwd; cat; exit 5', args=[HOSTILE, "two"],
               environment=[{"name": "HOSTILE", "value": HOSTILE}], stdin="from stdin\n")
    out, _, record = run_script(tmp_path, job)
    assert out == f"{HOSTILE}|two|{HOSTILE}|{tmp_path}/work dir 'x'\nfrom stdin\n"
    assert record == "5\n" and not Path("/tmp/owb-pwned").exists()


def test_script_runs_exe_from_path_not_a_shell_builtin(tmp_path: Path) -> None:
    out, _, record = run_script(tmp_path, spec(exe="echo", args=["--version"]))
    assert "GNU coreutils" in out and record == "0\n"  # bash's builtin echo would print "--version"


@pytest.mark.parametrize(("job", "message"), [
    (spec(exe="/no/such/program"), "Could not start /no/such/program: No such file or directory"),
    (spec(exe="/etc"), "Could not start /etc: Permission denied"),
    (spec(exe="no-such-program-xyz"), "Could not start no-such-program-xyz: No such file or directory"),
    (spec(exe="/bin/true", working_directory="/no/dir"),
     "Could not start /bin/true: Could not change to working directory /no/dir: No such file or directory"),
])
def test_script_reports_a_program_that_cannot_start(tmp_path: Path, job: JobSpec, message: str) -> None:
    _, err, record = run_script(tmp_path, job)
    assert record == f"failed\n{message}\n"
    assert parse_exit_file(record) == ExitRecord(None, message)
    assert f"Open Workbench: {message}" in err


def test_script_reports_a_program_it_may_not_run(tmp_path: Path) -> None:
    program = tmp_path / "not-executable"
    program.write_text("echo hi\n")
    program.chmod(0o644)
    _, _, record = run_script(tmp_path, spec(exe=str(program)))
    assert record == f"failed\nCould not start {program}: Permission denied\n"


def test_script_stays_to_record_a_program_killed_by_a_signal(tmp_path: Path) -> None:
    _, _, record = run_script(tmp_path, spec(command="kill -TERM $$"))
    assert record == "143\n"


def start_script(tmp_path: Path, command: str) -> tuple[subprocess.Popen[bytes], int, JobPaths]:
    """The wrapper as slurmstepd starts it; returns it, its program's pid, and the paths."""
    paths = write_script(tmp_path, spec(command=f"{command} & echo started; wait"))
    out = tmp_path / "stdout"
    with open(out, "wb") as handle:
        wrapper = subprocess.Popen(["bash", paths.script], stdout=handle, start_new_session=True)
    deadline = time.monotonic() + 10
    while out.read_text() != "started\n":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()
    return wrapper, int(children[0]), paths


def test_script_records_the_program_s_status_when_slurm_signals_every_process(tmp_path: Path) -> None:
    wrapper, program, paths = start_script(tmp_path, "trap 'sleep 0.2; exit 7' TERM; sleep 60")
    os.kill(wrapper.pid, signal.SIGTERM)  # scancel and the time limit signal the wrapper and the program alike
    os.killpg(program, signal.SIGTERM)
    assert wrapper.wait(timeout=10) == 7 and Path(paths.exit).read_text() == "7\n"


def test_script_force_signal_kills_the_program_group_at_once(tmp_path: Path) -> None:
    wrapper, program, paths = start_script(tmp_path, "trap 'echo got TERM' TERM; sleep 60")
    os.kill(wrapper.pid, signal.SIGUSR2)  # scancel --batch: the wrapper alone
    assert wrapper.wait(timeout=2) == 137 and Path(paths.exit).read_text() == "137\n"
    assert (tmp_path / "stdout").read_text() == "started\n"
    assert live_processes_of_group(program) == []


def test_script_never_starts_a_program_forced_before_it_ran(tmp_path: Path) -> None:
    """Slurm drops a signal sent while the job is allocated but its script has not started: the server's mark,
    made before the signal, is what the script finds then."""
    witness = tmp_path / "ran"
    paths = write_script(tmp_path, spec(command=f"touch {witness}; sleep 60"))
    Path(paths.force_quit).touch()
    done = subprocess.run(["bash", paths.script], capture_output=True, timeout=10, check=False)
    assert done.returncode == 137 and Path(paths.exit).read_text() == "137\n"
    assert not witness.exists()


def test_script_kills_a_program_whose_force_signal_came_while_the_script_began(tmp_path: Path) -> None:
    """The signal before the program exists (the wrapper's first lines): the trap, set first, keeps it."""
    paths = write_script(tmp_path, spec(command="echo ran; sleep 60"))
    script = Path(paths.script).read_text()
    marker = "set -m  # the program"
    assert marker in script  # the signal lands just before the program starts
    Path(paths.script).write_text(script.replace(marker, f"kill -{FORCE_SIGNAL} $$; {marker}", 1))
    done = subprocess.run(["bash", paths.script], capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 137 and Path(paths.exit).read_text() == "137\n"


def live_processes_of_group(pgid: int) -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp; zombies are dead
            found.append(int(stat_file.parent.name))
    return found


# -- parsers -------------------------------------------------------------------------------------------------------
def test_parse_squeue() -> None:
    jobs = parse_squeue(SQUEUE)
    assert len(jobs) == 10
    assert jobs["238"] == SlurmJob("238", "PENDING", "Resources", "", 0, None, "1:00:00")
    assert jobs["237"] == SlurmJob("237", "RUNNING", "", "vm", 0, None, "1:00:00")
    assert (jobs["235"].exit_code, jobs["235"].signal) == (3, None)  # raw wait status 768
    assert (jobs["236"].exit_code, jobs["236"].signal) == (None, 9)
    assert (jobs["15"].exit_code, jobs["15"].reason) == (143, "")
    assert jobs["233"] == SlurmJob("233", "TIMEOUT", "TimeLimit", "vm", None, 15, "1:00")
    assert parse_squeue("") == {} and parse_squeue("garbage line\n") == {}


def test_parse_scontrol_job() -> None:
    pending = parse_scontrol_job(SCONTROL_PENDING)
    assert pending == SlurmJob("238", "PENDING", "Resources", "", 0, None, "01:00:00")
    fields = parse_key_values(SCONTROL_PENDING)
    assert (fields["NumCPUs"], fields["MinMemoryNode"], fields["Features"], fields["Power"]) == ("2", "300M",
                                                                                               "fast&owbtest", "")
    odd = parse_key_values(SCONTROL_HELD_ODD_NAME)
    assert odd["JobName"] == "name with B=1 spaces" and odd["UserId"] == "owbexp(1005)"
    assert (odd["Command"], odd["WorkDir"]) == ("/tmp/my dir/job.sh", "/tmp/my dir")
    assert parse_scontrol_job(SCONTROL_TIMEOUT) == SlurmJob("233", "TIMEOUT", "TimeLimit", "vm", None, 15, "00:01:00")
    assert parse_scontrol_job(SCONTROL_CANCELLED_RUNNING) == SlurmJob("10", "CANCELLED", "", "vm", 7, None,
                                                                      "01:00:00")
    assert parse_scontrol_job("") is None


def test_parse_sacct() -> None:
    # sacct -n -P -X -o JobID,State,ExitCode,NodeList,Reason (needs slurmdbd; the format is Slurm's documented one)
    jobs = parse_sacct("41|CANCELLED by 1005|0:15|vm|None\n42|COMPLETED|0:0|vm|None\n43|PENDING|0:0|None assigned|"
                       "Priority\n")
    assert jobs["41"] == SlurmJob("41", "CANCELLED", "", "vm", None, 15, cancelled_by="1005")
    assert jobs["43"].nodes == "" and jobs["43"].reason == "Priority"


def test_parse_partitions_and_nodes() -> None:
    main, short = parse_partitions(PARTITIONS)
    assert (main.name, main.default, main.max_time_s, main.max_mem_per_node) == ("main", True, 3600, None)
    assert (short.name, short.default, short.max_time_s) == ("short", False, 300)
    (node,) = parse_nodes(SINFO)
    assert node.cpus == 2 and node.memory_mb == 24105 and node.features == ("owbtest", "fast")
    assert node.partitions == ("main", "short")


@pytest.mark.parametrize(("text", "seconds"), [("01:00:00", 3600), ("00:05:00", 300), ("1-02:00:00", 93600),
                                               ("5:30", 330), ("15", 900), ("UNLIMITED", None), ("", None)])
def test_parse_duration(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


def test_parse_exit_file() -> None:
    assert parse_exit_file("0\n") == ExitRecord(0)
    assert parse_exit_file("failed\nno luck\n") == ExitRecord(None, "no luck")
    assert parse_exit_file("") is None and parse_exit_file("1") == ExitRecord(1) and parse_exit_file("x") is None


def test_slurm_message_drops_the_command_prefixes() -> None:
    err = ("sbatch: error: invalid partition specified: nope\n"
           "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert slurm_message(err) == ("invalid partition specified: nope; "
                                  "Batch job submission failed: Invalid partition name specified")
    assert slurm_message("slurm_load_jobs error: Invalid job id specified\n") == "Invalid job id specified"


# -- states ----------------------------------------------------------------------------------------------------------
def job(state: str, **fields: Any) -> SlurmJob:
    return SlurmJob("7", state, **fields)


RAN = {"nodes": "vm"}
STATES: list[tuple[SlurmJob, ExitRecord | None, tuple[str, str, int | None]]] = [
    (job("PENDING", reason="Resources"), None, ("Pending", "Resources", None)),
    (job("REQUEUED", reason="BeginTime"), None, ("Pending", "BeginTime", None)),
    (job("CONFIGURING", **RAN), None, ("Running", "", None)),
    (job("RUNNING", **RAN), None, ("Running", "", None)),
    (job("COMPLETING", **RAN), None, ("Running", "", None)),
    (job("SUSPENDED", **RAN), None, ("Suspended", "Suspended by Slurm", None)),
    (job("COMPLETED", exit_code=0, **RAN), ExitRecord(0), ("Finished", "", 0)),
    (job("COMPLETED", exit_code=0, **RAN), None, ("Finished", "", 0)),
    (job("FAILED", exit_code=3, **RAN), ExitRecord(3), ("Finished", "", 3)),
    (job("FAILED", exit_code=3, **RAN), None, ("Finished", "", 3)),  # the exit file is not visible (yet)
    (job("FAILED", exit_code=143, **RAN), ExitRecord(143), ("Finished", "Terminated by SIGTERM", 143)),
    (job("FAILED", signal=9, reason="JobLaunchFailure", **RAN), None, ("Killed", "Killed by SIGKILL", 137)),
    (job("FAILED", exit_code=137, **RAN), ExitRecord(137), ("Killed", "Killed by SIGKILL", 137)),
    (job("FAILED", exit_code=127, **RAN), ExitRecord(None, "Could not start x: No such file or directory"),
     ("Failed", "Could not start x: No such file or directory", None)),
    (job("FAILED", exit_code=1, reason="JobLaunchFailure"), None,
     ("Failed", "Slurm could not start the job: JobLaunchFailure", None)),
    (job("CANCELLED", reason="Priority"), None, ("Canceled", "Cancelled in Slurm before it started", None)),
    (job("CANCELLED", exit_code=7, **RAN), ExitRecord(7), ("Finished", "Cancelled in Slurm", 7)),
    (job("CANCELLED", exit_code=143, **RAN), ExitRecord(143),
     ("Finished", "Cancelled in Slurm: terminated by SIGTERM", 143)),
    (job("CANCELLED", signal=9, **RAN), None, ("Killed", "Cancelled in Slurm: killed by SIGKILL", 137)),
    (job("CANCELLED", cancelled_by="0", **RAN), None, ("Killed", "Cancelled in Slurm by uid 0", None)),
    (job("TIMEOUT", signal=15, time_limit="1:00", **RAN), None,
     ("Killed", "Killed: exceeded its time limit of 1 min", 143)),
    (job("TIMEOUT", **RAN), ExitRecord(3), ("Killed", "Killed: exceeded its time limit", 3)),
    (job("OUT_OF_MEMORY", signal=9, **RAN), None,
     ("Killed", "Killed: exceeded its memory limit (Slurm OUT_OF_MEMORY)", 137)),
    (job("PREEMPTED", signal=15, **RAN), None, ("Killed", "Killed: preempted by Slurm", 143)),
    (job("NODE_FAIL", **RAN), None, ("Failed", "Slurm NODE_FAIL: a node of the job failed", None)),
    (job("BOOT_FAIL", **RAN), None, ("Failed", "Slurm BOOT_FAIL: its node failed to boot", None)),
    (job("DEADLINE"), None, ("Canceled", "Deadline reached in Slurm before it started", None)),
]


@pytest.mark.parametrize(("slurm", "record", "expected"), STATES, ids=[f"{s.state}-{i}" for i, (s, _, _) in
                                                                        enumerate(STATES)])
def test_map_state(slurm: SlurmJob, record: ExitRecord | None, expected: tuple[str, str, int | None]) -> None:
    state = map_state(slurm, record, started=False)
    assert state is not None
    assert (state.status, state.status_message, state.exit_code) == expected


def test_map_state_uses_what_was_seen_and_the_captured_output() -> None:
    seen_running = map_state(job("CANCELLED"), None, started=True)
    with_nodes = map_state(job("CANCELLED", nodes="vm"), None, started=False)
    assert seen_running is not None and with_nodes is not None
    assert (seen_running.status, with_nodes.status, with_nodes.host) == ("Killed", "Killed", "vm")
    assert map_state(job("SOMETHING_NEW"), None, started=True) is None
    running = map_state(parse_squeue(SQUEUE)["237"], None, started=False)
    assert running is not None and (running.status, running.host) == ("Running", "vm")
    assert from_exit_file(ExitRecord(2)).exit_code == 2 and from_exit_file(ExitRecord(None, "no")).status == "Failed"


# -- what the cluster offers, and launch checks --------------------------------------------------------------------
def test_describe_reads_partitions_features_and_limits() -> None:
    env = describe_slurm("HPC", SETTINGS, INFO)
    assert env["type"] == "Slurm" and env["queues"] == ["main", "short"]
    assert env["placementConstraints"] == [{"name": "fast", "value": ""}, {"name": "owbtest", "value": ""}]
    limits = {item["type"]: (item["maxValue"], item["defaultValue"]) for item in env["resourceLimits"]}
    assert limits == {"cpuCount": ("2", ""), "memory": ("24105", ""), "cpuTime": ("3600", "")}
    narrowed = ClusterSettings(type="Slurm", output_dir="/o", queues=["short"], placement_constraints=["fast"],
                               limits={"memory": LimitSettings(max=1000, default=100)})
    env = describe_slurm("HPC", narrowed, INFO)
    limits = {item["type"]: (item["maxValue"], item["defaultValue"]) for item in env["resourceLimits"]}
    assert env["queues"] == ["short"] and env["placementConstraints"] == [{"name": "fast", "value": ""}]
    assert limits == {"cpuCount": ("2", ""), "memory": ("1000", "100"), "cpuTime": ("300", "")}


@pytest.mark.parametrize(("fields", "message"), [
    ({"queues": ["gpu"]}, "has no queue(s) ['gpu']"),
    ({"placement_constraints": [{"name": "bigmem", "value": ""}]}, "has no placement constraint(s) ['bigmem']"),
    ({"resource_limits": [{"type": "cpuCount", "value": "3"}]}, "cpuCount=3 exceeds the maximum 2 of partition(s) "
                                                                "main"),
    ({"resource_limits": [{"type": "cpuCount", "value": "1.5"}]}, "must be a whole number"),
    ({"resource_limits": [{"type": "memory", "value": "999999"}]}, "exceeds the maximum 24105"),
    ({"resource_limits": [{"type": "cpuTime", "value": "301"}], "queues": ["short"]},
     "cpuTime=301 exceeds the maximum 300 of partition(s) short"),
    ({"resource_limits": [{"type": "memorySwap", "value": "1"}]}, "does not support the memorySwap limit"),
    ({"resource_limits": [{"type": "memory", "value": "lots"}]}, "must be a number"),
    ({"resource_limits": [{"type": "memory", "value": "0"}]}, "must be positive"),
    ({"container_image": "ubuntu"}, "does not support containers"),
    ({"resource_limits": [{"type": "memory", "value": "nan"}]}, "must be a number"),
    ({"resource_limits": [{"type": "cpuTime", "value": "inf"}]}, "must be a number"),
    ({"environment": [{"name": "A-B", "value": "x"}]}, "not a valid name=value"),
])
def test_check_spec_refuses_before_submitting(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        check_spec("HPC", SETTINGS, INFO, spec(**fields))
    assert message in err.value.message


def test_check_spec_accepts_what_the_cluster_has() -> None:
    check_spec("HPC", SETTINGS, INFO, spec(queues=["short"], placement_constraints=[{"name": "fast", "value": ""}],
                                           resource_limits=[{"type": "cpuCount", "value": "2"},
                                                            {"type": "cpuTime", "value": "300"},
                                                            {"type": "memory", "value": "24105"}]))


# -- the backend's logic, with a stand-in for Slurm's commands ------------------------------------------------------
class FakeSlurm:
    """Answers like Slurm 22.05 without accounting; records every call."""

    def __init__(self, squeue: str) -> None:
        self.squeue, self.calls = squeue, []

    def __call__(self, name: str, args: list[str], user: Account | None = None, timeout: float = 30) -> Result:
        self.calls.append((name, *args))
        if name == "squeue":
            return Result(0, self.squeue, "")
        if name == "scontrol":
            return Result(1, "", "slurm_load_jobs error: Invalid job id specified\n")
        return Result(1, "", "Slurm accounting storage is disabled\n")


def fake_cluster(tmp_path: Path, squeue: str, interval: float = 60) -> tuple[SlurmCluster, FakeSlurm]:
    cluster = SlurmCluster("HPC", ClusterSettings(type="Slurm", output_dir=str(tmp_path), poll_interval_s=interval))
    fake = FakeSlurm(squeue)
    cluster.commands.run = fake  # type: ignore[method-assign]
    return cluster, fake


def ref(job_id: str, slurm_id: str, status: str = "Pending", **state: Any) -> JobRef:
    return JobRef(job_id, status, spec(), ACCOUNT, {"slurmJobId": slurm_id, "dir": f"/nowhere/{job_id}", **state})


def test_poll_asks_squeue_once_per_interval_for_all_jobs(tmp_path: Path) -> None:
    cluster, fake = fake_cluster(tmp_path, SQUEUE)
    refs = [ref("a", "238"), ref("b", "237"), ref("c", "235", "Running", started=True)]
    updates = cluster.poll(refs)
    assert fake.calls == [("squeue", "-h", "--states=all", "--jobs=238,237,235", "-O",
                           "JobID:|,State:|,NodeList:|,exit_code:|,TimeLimit:|,Reason:|")]
    assert (updates["a"].status, updates["a"].status_message) == ("Pending", "Resources")
    assert (updates["b"].status, updates["b"].host, updates["b"].cluster_state) == (
        "Running", "vm", {"slurmJobId": "237", "dir": "/nowhere/b", "started": True})
    assert (updates["c"].status, updates["c"].exit_code) == ("Finished", 3)
    assert cluster.poll(refs) == {} and len(fake.calls) == 1  # within the interval: Slurm is not asked


def test_poll_reports_only_changes(tmp_path: Path) -> None:
    cluster, _ = fake_cluster(tmp_path, SQUEUE, interval=0.001)
    refs = [ref("a", "238")]
    assert "a" in cluster.poll(refs)  # first sight: Slurm's reason is news
    time.sleep(0.002)
    assert cluster.poll(refs) == {}


# Slurm forgetting a job (MinJobAge) is caused for real in test_slurm.py, on a cluster of its own.


def test_config_problems_stop_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="output_dir': must be an absolute path"):
        SlurmCluster("HPC", ClusterSettings(type="Slurm", output_dir="relative/dir"))
    with pytest.raises(ConfigError, match=r"slurm_conf': no file /no/slurm\.conf"):
        SlurmCluster("HPC", ClusterSettings(type="Slurm", output_dir="/o", slurm_conf="/no/slurm.conf"))
    monkeypatch.setenv("PATH", str(tmp_path))
    cluster = SlurmCluster("HPC", ClusterSettings(type="Slurm", output_dir=str(tmp_path / "out")))
    with pytest.raises(LaunchFailed, match="cannot find Slurm's 'sbatch' command"):
        cluster.submit("j", spec(), Account("me", os.getuid(), os.getgid(), (), str(tmp_path), "/bin/sh"))


def test_commands_take_the_owners_uid_gid_and_groups_through_setpriv(tmp_path: Path) -> None:
    account = Account("al", 1001, 1002, (1002, 27), str(tmp_path), "/bin/sh")
    prefix = as_user(account)
    assert prefix == ["/usr/bin/setpriv", "--reuid=1001", "--regid=1002", "--groups=1002,27", "--"]
    assert as_user(Account("al", 1001, 1002, (), str(tmp_path), "/bin/sh"))[3] == "--clear-groups"
    if os.geteuid() == 0:  # and the prefix really does it
        nobody = Account("nobody", 65534, 65534, (), "/", "/bin/sh")
        out = subprocess.run([*as_user(nobody), "sh", "-c", "id -u; id -g; id -G"], capture_output=True, text=True,
                             check=True, cwd="/")
        assert out.stdout.split() == ["65534", "65534", "65534"]
