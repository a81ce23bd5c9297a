"""Running Slurm's commands: environment, binaries, identity, timeouts, and errors translated.

Every call is counted per command (``counts``), so tests and benchmarks can check that the
controller is asked once per poll, not once per job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass

from openworkbench.clusters.base import Account, login_environment
from openworkbench.config import ClusterSettings
from openworkbench.errors import NotAvailable, WorkbenchError

SETPRIV = "/usr/bin/setpriv"
TIMEOUT_S = 30.0  # Slurm's own clients retry for MessageTimeout (10 s) before they give up


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def slurm_message(stderr: str) -> str:
    """Slurm's error lines without their "sbatch: error: " prefixes, on one line."""
    lines = []
    for line in stderr.strip().splitlines():
        for prefix in ("error: ", "fatal: "):
            head, sep, rest = line.partition(prefix)
            if sep and ":" not in head.strip(" :"):
                line = rest
                break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines) or "no message"


def as_user(account: Account) -> list[str]:
    """The prefix that runs a command with the account's uid, gid and groups.

    Changing identity in the child (``Popen(user=...)``) makes Python fork the whole server instead of
    vfork-ing (5.8 ms against 1.8 ms with setpriv, measured with a 150 MB parent); runuser would also open
    a PAM session (~5 ms). util-linux's setpriv sets exactly the three and execs.
    """
    groups = f"--groups={','.join(map(str, account.groups))}" if account.groups else "--clear-groups"
    return [SETPRIV, f"--reuid={account.uid}", f"--regid={account.gid}", groups, "--"]


class SlurmCommands:
    def __init__(self, settings: ClusterSettings) -> None:
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        self.path = f"{settings.slurm_bin}:{path}" if settings.slurm_bin else path
        conf = settings.slurm_conf or os.environ.get("SLURM_CONF", "")
        # Only what Slurm's clients need: nothing of the server's own environment reaches them.
        self.env = {"PATH": self.path, "LANG": "C", **({"SLURM_CONF": conf} if conf else {})}
        self.counts: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def binary(self, name: str) -> str:
        found = shutil.which(name, path=self.path)
        if found is None:
            raise NotAvailable(f"cannot find Slurm's '{name}' command in {self.path} (set slurm_bin)")
        return found

    def run(self, name: str, args: list[str], user: Account | None = None, timeout: float = TIMEOUT_S) -> Result:
        """Run a Slurm command, as ``user`` when given and we are root; raise NotAvailable if it cannot run."""
        argv = [self.binary(name), *args]
        # As root, submit as the job's owner: Slurm then runs the job with that identity, never root's.
        owner = user if user is not None and os.geteuid() == 0 and user.uid != 0 else None
        if owner is not None:
            argv = [*as_user(owner), *argv]
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv, env=self.env if owner is None else {**login_environment(owner), **self.env},
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                check=False, cwd="/",  # the user may not be able to enter the server's directory
            )
        except subprocess.TimeoutExpired:
            raise NotAvailable(f"Slurm's '{name}' did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise NotAvailable(f"cannot run Slurm's '{name}': {exc}") from None
        finally:
            with self._lock:
                self.counts[name] += 1
                self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started
        return Result(done.returncode, done.stdout, done.stderr)

    def check(self, name: str, args: list[str], error: type[WorkbenchError] = NotAvailable,
              user: Account | None = None, prefix: str = "") -> str:
        """Run and return stdout; a non-zero exit raises ``error`` with Slurm's own message."""
        result = self.run(name, args, user)
        if result.returncode != 0:
            raise error(f"{prefix}{slurm_message(result.stderr or result.stdout)}")
        return result.stdout
