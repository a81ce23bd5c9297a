"""Routes in the store, and IDE ports allocated instead of derived from the session id.

- ``routes``: where the proxy sends ``/s/<part>/`` (proxy/routes.py). Every server process on the store reads
  it, so a session started or stopped by one is routed or refused by all.
- ``routes_epoch``: one counter that triggers bump on every change to ``routes`` (any writer: a server, an
  operator's SQL), read by each process on every cached route it uses, as ``auth_epoch`` is for sign-ins.
- ``sessions.port`` / ``sessions.port_host``: the loopback port of an IDE that cannot listen on a socket
  (RStudio), taken from ``sessions.port_range`` while the session lives; unique per host.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BUMP = "UPDATE routes_epoch SET value = value + 1 WHERE id = 1;"
EVENTS = [("insert", "INSERT"), ("update", "UPDATE"), ("delete", "DELETE")]


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("port", sa.Integer, nullable=True))
        batch.add_column(sa.Column("port_host", sa.String(255), nullable=True))
        batch.create_index("ix_sessions_port_host_port", ["port_host", "port"], unique=True)
    op.create_table(
        "routes",
        sa.Column("part", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(8), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False,
                  unique=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("upstream", sa.Text, nullable=True),
        sa.Column("upstream_uid", sa.Integer, nullable=False),
        sa.Column("strip_prefix", sa.Boolean, nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
    )
    op.create_table("routes_epoch", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("value", sa.BigInteger, nullable=False))
    op.execute("INSERT INTO routes_epoch (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION routes_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                {BUMP}
                RETURN NULL;
            END $$""")
        for name, event in EVENTS:
            op.execute(f"CREATE TRIGGER routes_epoch_{name} AFTER {event} ON routes FOR EACH ROW "
                       "EXECUTE FUNCTION routes_epoch_bump()")
        op.execute("CREATE TRIGGER routes_epoch_truncate AFTER TRUNCATE ON routes "
                   "FOR EACH STATEMENT EXECUTE FUNCTION routes_epoch_bump()")
    else:
        for name, event in EVENTS:
            op.execute(f"CREATE TRIGGER routes_epoch_{name} AFTER {event} ON routes FOR EACH ROW BEGIN {BUMP} END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION routes_epoch_bump() CASCADE")  # and its triggers
    op.drop_table("routes")  # SQLite drops a table's triggers with it
    op.drop_table("routes_epoch")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_port_host_port")
        batch.drop_column("port_host")
        batch.drop_column("port")
