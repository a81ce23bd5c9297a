"""The CI rule of tests/ci_required.py, on a small suite of its own run in a fresh pytest process."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

SUITE = '''
import pytest

def test_runs():
    pass

def test_needs_postgres():
    pytest.skip("WORKBENCH_TEST_PG_URL is not set")

@pytest.mark.skipif(True, reason="needs a Slurm cluster")
def test_needs_slurm():
    pass

def test_optional():
    pytest.skip("optional: a GPU")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''

BROWSER = '''
import pytest
pytest.skip("Chromium missing", allow_module_level=True)
'''


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, *args: str) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_suite=SUITE, test_browser=BROWSER)
    return pytester.runpytest_subprocess("-p", "tests.ci_required", "-p", "no:cacheprovider", "-rA",
                                         "--continue-on-collection-errors", *args)


def test_without_ci_missing_services_skip(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == 0


def test_under_ci_a_skipped_service_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(pytester, monkeypatch, "true")
    # Postgres, Slurm and the module-level Chromium skip fail; the optional skip and the xfail stay as they are.
    # (a skip in setup, as skipif's, is reported as an error of the setup, a collection skip as one of collection)
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, errors=2)
    assert result.ret != 0
    for reason in ("WORKBENCH_TEST_PG_URL is not set", "needs a Slurm cluster", "Chromium missing"):
        result.stdout.fnmatch_lines([f"*skipped under CI=true*{reason}*"])


def test_other_ci_values_do_not_enforce(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(pytester, monkeypatch, "false").ret == 0


def test_under_ci_a_skip_on_a_worker_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` runs most of the suite on pytest-xdist workers: the rule holds there too."""
    result = run(pytester, monkeypatch, "true", "-n", "2")
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, errors=2)  # as without workers
    assert result.ret != 0
    for reason in ("WORKBENCH_TEST_PG_URL is not set", "needs a Slurm cluster", "Chromium missing"):
        result.stdout.fnmatch_lines([f"*skipped under CI=true*{reason}*"])
