#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL on a Unix socket in a temp dir; stop it after.
# The command sees WORKBENCH_TEST_PG_URL (a SQLAlchemy URL of a superuser connection).
set -euo pipefail
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
dir=$(mktemp -d /tmp/owb-pg.XXXXXX)
chmod 755 "$dir"
as_pg=(env -C /)  # the postgres user may not be able to enter the caller's directory
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"   # initdb refuses to run as root
    as_pg=(env -C / runuser -u postgres --)
fi
stop() {
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
"${as_pg[@]}" "$pg_bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -w -l "$dir/server.log" \
    -o "-k $dir -c listen_addresses='' -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
export WORKBENCH_TEST_PG_URL="postgresql+psycopg://postgres@/postgres?host=$dir"
set +e
"$@"
status=$?
exit $status
