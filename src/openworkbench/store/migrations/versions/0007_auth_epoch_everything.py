"""The auth epoch is bumped by every change to who may sign in, and servers read it instead of LISTENing.

- A change of ``users.id`` or ``api_tokens.id`` (an operator's SQL) changes whom a token or a browser
  sign-in stands for, so the update triggers watch the ids too.
- PostgreSQL's TRUNCATE fires no row trigger: a statement trigger on each of the three tables bumps.
- Servers now read the counter on every cache hit, so the trigger's NOTIFY has no listener left; it is
  dropped (each NOTIFY also serialises commits on a server-wide lock).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (trigger name, event before, event now)
UPDATES = [
    ("api_tokens_update", "UPDATE OF kind, token_hash, user_id ON api_tokens",
     "UPDATE OF id, kind, token_hash, user_id ON api_tokens"),
    ("users_update", "UPDATE OF username, is_admin, is_super_admin, disabled ON users",
     "UPDATE OF id, username, is_admin, is_super_admin, disabled ON users"),
]
TRUNCATED = ["api_tokens", "users", "browser_sessions"]
BUMP = "UPDATE auth_epoch SET value = value + 1 WHERE id = 1;"


def _function(notify: bool) -> None:
    notify_line = "PERFORM pg_notify('openworkbench_auth', '');" if notify else ""
    op.execute(f"""
        CREATE OR REPLACE FUNCTION auth_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {BUMP}
            {notify_line}
            RETURN NULL;
        END $$""")


def _update_triggers(now: bool, postgres: bool) -> None:
    for name, before, after in UPDATES:
        event = after if now else before
        table = event.split(" ON ")[1]
        op.execute(f"DROP TRIGGER auth_epoch_{name}" + (f" ON {table}" if postgres else ""))
        body = "EXECUTE FUNCTION auth_epoch_bump()" if postgres else f"BEGIN {BUMP} END"
        op.execute(f"CREATE TRIGGER auth_epoch_{name} AFTER {event} FOR EACH ROW {body}")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _update_triggers(now=True, postgres=postgres)
    if postgres:
        _function(notify=False)
        for table in TRUNCATED:
            op.execute(f"CREATE TRIGGER auth_epoch_{table}_truncate AFTER TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION auth_epoch_bump()")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for table in TRUNCATED:
            op.execute(f"DROP TRIGGER auth_epoch_{table}_truncate ON {table}")
        _function(notify=True)
    _update_triggers(now=False, postgres=postgres)
