"""How `make test` shares the tests among its pytest-xdist workers (`--dist loadscope`, scripts/test-phases.sh).

One unit of work per test module, so a module's module-scoped servers start once rather than once per worker
(test_cli.py's fixture starts 8 servers at once). Every module that uses the one Slurm cluster of `make test`
(it reads WORKBENCH_TEST_SLURM_CONF) is in a single unit: the cluster has 2 CPUs and some tests fill them, so
those tests must run one after another, as they did before the suite ran in parallel. Largest units go first
(xdist's --loadscope-reorder), so a big module does not start last.

xdist's own answer for such groups, `--dist loadgroup` with xdist_group marks, groups nothing under pytest 9.2
(xdist 3.8 renames node ids in a field pytest no longer reads: pytest-dev/pytest-xdist#1386).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

SLURM_SCOPE = "the Slurm cluster"
ROOT = Path(__file__).parents[1]


@functools.cache
def uses_slurm(module: str) -> bool:
    try:
        return "WORKBENCH_TEST_SLURM_CONF" in (ROOT / module).read_text(errors="replace")
    except OSError:  # not a file of ours (a path outside the repository): a unit of its own
        return False


class ModuleScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return SLURM_SCOPE if uses_slurm(module) else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    if config.getvalue("dist") != "loadscope":
        return None  # another --dist asked for explicitly: xdist's own
    return ModuleScheduling(config, log)
