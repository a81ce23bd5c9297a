"""What is handed to ``sbatch``: its argv, the batch script, the environment file. All pure.

sbatch's options travel in its argv rather than in ``#SBATCH`` lines: argv needs no quoting, while
``#SBATCH`` lines go through sbatch's own tokenizer (its quote rules, no newlines), which user text
such as a job name or working directory could break out of.

The batch script is a small bash wrapper around the job's program. It

- changes to the working directory itself and checks the program exists, so a job that cannot
  start is reported as such (slurmstepd would silently fall back to /tmp);
- runs the program in its own process group (``set -m``) with default signal handling;
- ignores SIGTERM itself once the program runs (Slurm signals the program directly on ``scancel`` or
  at the time limit; an ignored signal never cuts ``wait`` short, so the status it returns is the
  program's) and kills the program's process group at once on SIGUSR2 (``force_quit``: Slurm turns a
  ``scancel --signal=KILL`` into a TERM-then-KILL cancel, so a real SIGKILL needs the wrapper). It does not
  start the program at all when the server has marked the job (``force_quit``, written before the signal):
  Slurm drops a signal sent while a job is allocated (squeue says R) but its batch script has not started;
- writes the program's exit status to ``<job dir>/status/exit`` (temporary file + rename), so exit codes
  are right without accounting, and exits with it.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass

from openworkbench.clusters.base import Account
from openworkbench.clusters.local_spec import job_argv, job_environment, working_directory
from openworkbench.config import ClusterSettings
from openworkbench.models import JobSpec

FORCE_SIGNAL = "USR2"  # sent to the wrapper alone (scancel --batch) to SIGKILL the program now
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class JobPaths:
    """The files of one job in the shared output directory: ``<output_dir>/<job id>/``."""

    dir: str

    @property
    def script(self) -> str:
        return f"{self.dir}/job.sh"

    @property
    def env(self) -> str:
        return f"{self.dir}/env"

    @property
    def stdin(self) -> str:
        return f"{self.dir}/stdin"

    @property
    def stdout(self) -> str:
        return f"{self.dir}/stdout"

    @property
    def stderr(self) -> str:
        return f"{self.dir}/stderr"

    @property
    def exit(self) -> str:
        return f"{self.dir}/status/exit"

    @property
    def force_quit(self) -> str:
        return f"{self.dir}/force_quit"

    @property
    def slurm_id(self) -> str:
        return f"{self.dir}/slurm_job_id"


def job_paths(output_dir: str, job_id: str) -> JobPaths:
    return JobPaths(f"{output_dir.rstrip('/')}/{job_id}")


@dataclass(frozen=True)
class Request:
    """The resources asked of Slurm, in Slurm's units (cluster defaults applied)."""

    partitions: tuple[str, ...] = ()
    cpus: int | None = None
    memory_mb: int | None = None
    time_minutes: int | None = None
    features: tuple[str, ...] = ()


def slurm_request(spec: JobSpec, settings: ClusterSettings) -> Request:
    def limit(kind: str) -> float | None:
        given = spec.limit(kind)
        if given is not None:
            return float(given)
        conf = settings.limits.get(kind)
        return conf.default if conf else None

    cpus, memory, cpu_time = limit("cpuCount"), limit("memory"), limit("cpuTime")
    return Request(
        partitions=tuple(spec.queues),
        cpus=math.ceil(cpus) if cpus else None,
        memory_mb=math.ceil(memory) if memory else None,
        # Slurm's time limit is wall-clock minutes: cpuTime seconds, rounded up to a whole minute.
        time_minutes=math.ceil(cpu_time / 60) if cpu_time else None,
        features=tuple(dict.fromkeys(c.name for c in spec.placement_constraints)),
    )


def job_name(spec: JobSpec) -> str:
    return _CONTROL.sub(" ", spec.name)[:200]  # one line in squeue and scontrol


def sbatch_argv(job_id: str, spec: JobSpec, account: Account, paths: JobPaths, request: Request) -> list[str]:
    """sbatch's arguments (without the program name)."""
    argv = [
        "--parsable",
        f"--job-name={job_name(spec)}",
        f"--comment=openworkbench:{job_id}",  # finds the job again if the server died during sbatch
        f"--output={paths.stdout}",
        f"--error={paths.stderr}",
        f"--chdir={working_directory(spec, account)}",
        # NIL: take neither the submitter's environment nor a login one; the file is the whole environment.
        "--export=NIL",
        f"--export-file={paths.env}",
    ]
    if request.partitions:
        argv.append(f"--partition={','.join(request.partitions)}")
    if request.cpus:
        argv.append(f"--cpus-per-task={request.cpus}")
    if request.memory_mb:
        argv.append(f"--mem={request.memory_mb}")
    if request.time_minutes:
        argv.append(f"--time={request.time_minutes}")
    if request.features:
        argv.append(f"--constraint={'&'.join(request.features)}")  # every feature named must be present
    argv.append(paths.script)
    return argv


def env_file(spec: JobSpec, account: Account) -> bytes:
    """``--export-file`` content: NUL-separated NAME=value, so commas and newlines in values survive."""
    env = job_environment(spec, account)
    return b"".join(f"{name}={value}".encode() + b"\0" for name, value in env.items())


def file_size_limit(max_file_size_mb: int) -> list[str]:
    """RLIMIT_FSIZE for the program (bash's ``ulimit -f`` counts KiB), soft and hard; none for 0. A node whose
    hard limit is lower already keeps it: ``ulimit`` cannot raise it, and lower is what is wanted."""
    if not max_file_size_mb:
        return []
    return [f"ulimit -f {max_file_size_mb * 1024} 2>/dev/null  # clusters.<name>.max_file_size_mb: SIGXFSZ past it"]


def render_script(job_id: str, spec: JobSpec, account: Account, paths: JobPaths, max_file_size_mb: int = 0) -> str:
    """The batch script: a bash wrapper that runs the job's program and records its exit status."""
    q = shlex.quote
    argv = job_argv(spec)
    cwd = working_directory(spec, account)
    cannot = f"Could not start {argv[0]}"
    stdin = paths.stdin if spec.stdin else "/dev/null"
    lines = [
        "#!/bin/bash -p",
        f"# Open Workbench job {job_id}. sbatch's options are in its argv: see `scontrol show job`.",
        "# -p: ignore BASH_ENV and shell functions of the job's environment; the wrapper runs none of its code.",
        "__owb_end() {  # the server may read this file at any time: write it whole, then rename",
        f"    printf '%s\\n' \"$@\" > {q(paths.exit + '.tmp')} && /bin/mv -f {q(paths.exit + '.tmp')} {q(paths.exit)}",
        "}",
        "__owb_fail() { printf 'Open Workbench: %s\\n' \"$1\" >&2; __owb_end failed \"$1\"; exit 127; }",
        "__owb_pid= __owb_forced=",
        f"trap '__owb_forced=1; [ -z \"$__owb_pid\" ] || kill -KILL -- \"-$__owb_pid\" 2>/dev/null' {FORCE_SIGNAL}"
        "  # force_quit",
        "__owb_why() { if [ -e \"$1\" ]; then echo 'Permission denied'; else echo 'No such file or directory'; fi; }",
        f"cd -- {q(cwd)} 2>/dev/null ||",
        f"    __owb_fail {q(f'{cannot}: Could not change to working directory {cwd}')}\": $(__owb_why {q(cwd)})\"",
    ]
    if "/" in argv[0]:
        lines.append(f"[ -f {q(argv[0])} ] && [ -x {q(argv[0])} ] ||"
                     f" __owb_fail {q(cannot)}\": $(__owb_why {q(argv[0])})\"")
    else:
        lines.append(f"type -P -- {q(argv[0])} >/dev/null || __owb_fail {q(cannot + ': No such file or directory')}")
    lines += file_size_limit(max_file_size_mb)
    lines += [
        # Forced before its start: Slurm dropped the signal, sent while there was no batch script yet to get it.
        f"[ ! -e {q(paths.force_quit)} ] || {{ __owb_end 137; exit 137; }}",
        "set -m  # the program gets its own process group and default signal handling",
        f"exec {' '.join(q(a) for a in argv)} < {q(stdin)} &",
        "__owb_pid=$!",
        "set +m",
        "trap '' TERM  # Slurm signals the program itself (scancel, time limit): stay to record how it ended",
        "[ -z \"$__owb_forced\" ] || kill -KILL -- \"-$__owb_pid\" 2>/dev/null  # forced while it started",
        "exec 2>/dev/null  # bash's own job notices are not the program's output",
        "wait \"$__owb_pid\"; __owb_code=$?",
        "[ -z \"$__owb_forced\" ] || __owb_code=137  # wait was cut short by the signal; the program is SIGKILLed",
        "__owb_end \"$__owb_code\"",
        "exit \"$__owb_code\"",
    ]
    return "\n".join(lines) + "\n"
