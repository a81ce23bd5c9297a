"""A counter that every change to who may sign in bumps, so cached sign-ins are dropped at once.

Database triggers do the bumping, so any writer counts: this server, the CLI in another process,
or an operator's own SQL. On PostgreSQL the trigger also sends a NOTIFY that servers LISTEN for.
Writes of ``last_used`` and ``last_sign_in`` change no one's access and bump nothing.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (trigger name, event) -- the columns listed are the ones a principal is made of.
TRIGGERS = [
    ("api_tokens_delete", "DELETE ON api_tokens"),
    ("api_tokens_update", "UPDATE OF kind, token_hash, user_id ON api_tokens"),
    ("users_delete", "DELETE ON users"),
    ("users_update", "UPDATE OF username, is_admin, is_super_admin, disabled ON users"),
    ("browser_sessions_delete", "DELETE ON browser_sessions"),
    ("browser_sessions_update", "UPDATE OF cookie_hash, token_id, expires ON browser_sessions"),
]
CHANNEL = "openworkbench_auth"


def upgrade() -> None:
    op.create_table("auth_epoch", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("value", sa.BigInteger, nullable=False))
    op.execute("INSERT INTO auth_epoch (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION auth_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE auth_epoch SET value = value + 1 WHERE id = 1;
                PERFORM pg_notify('{CHANNEL}', '');
                RETURN NULL;
            END $$""")
        for name, event in TRIGGERS:
            op.execute(f"CREATE TRIGGER auth_epoch_{name} AFTER {event} FOR EACH ROW "
                       "EXECUTE FUNCTION auth_epoch_bump()")
    else:
        for name, event in TRIGGERS:
            op.execute(f"CREATE TRIGGER auth_epoch_{name} AFTER {event} FOR EACH ROW "
                       "BEGIN UPDATE auth_epoch SET value = value + 1 WHERE id = 1; END")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, event in TRIGGERS:
        op.execute(f"DROP TRIGGER auth_epoch_{name}" + (f" ON {event.split(' ON ')[1]}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION auth_epoch_bump()")
    op.drop_table("auth_epoch")
