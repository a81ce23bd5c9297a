"""Under CI=true a skipped test is a failure: CI must never go green on a suite that ran half.

Locally a test skips when what it needs is missing (PostgreSQL's URL, the Slurm cluster, root, Chromium, the
IDEs); `make test` starts all of them, so in CI a skip can only mean a service that failed to start. A skip
whose reason starts with ``optional:`` stays a skip (for a test of something CI is not expected to have).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

OPTIONAL = "optional:"


def _enforced() -> bool:
    return os.environ.get("CI") == "true"


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _reason(report)
    if hasattr(report, "wasxfail") or reason.startswith(OPTIONAL):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where every required service must be there: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if _enforced() and report.skipped:
        _fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if _enforced() and report.skipped:  # a module-level skip (test_browser.py without Chromium)
        _fail(report)
