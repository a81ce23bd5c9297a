#!/usr/bin/env bash
# `make test`'s pytest, in two phases against the one PostgreSQL and Slurm its caller started:
#   scripts/test-phases.sh PYTEST [PYTEST_ARGS...]
# 1. every test not marked `serial`, on TEST_WORKERS (default 4) pytest-xdist workers: the tests mostly wait on
#    real servers, IDEs and Slurm, so 4 workers pay even on 2 cores. A module's tests share a worker, and all
#    the modules that use the Slurm cluster share one (tests/xdist_scheduling.py).
# 2. the tests marked `serial`, one at a time with nothing else of the suite running: they assert latencies
#    (get_session under 1 s during an attack, p99 in a storm) or load the whole machine (soak, crash, outage).
# Both phases always run; the status is non-zero if either failed. A phase that selects no test (pytest's 5) is
# not a failure: PYTEST_ARGS may name tests of one phase only. docs/performance.md, "Test suite", has the figures.
set -uo pipefail
pytest=${1:?usage: test-phases.sh PYTEST [ARGS...]}
shift

phase() {
    local name=$1 started=$SECONDS status
    shift
    "$pytest" "$@"
    status=$?
    echo "test-phases: $name phase: exit $status after $((SECONDS - started)) s" >&2
    [ "$status" -eq 5 ] && status=0
    return "$status"
}

phase parallel -n "${TEST_WORKERS:-4}" --dist loadscope -m "not serial" "$@"
parallel=$?
phase serial -m serial "$@"
serial=$?
[ "$parallel" -eq 0 ] && [ "$serial" -eq 0 ]
