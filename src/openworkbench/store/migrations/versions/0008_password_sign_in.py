"""Password sign-in: a local password hash per user, and browser sign-ins bound to a user instead of a token.

``browser_sessions.token_id`` becomes nullable and ``user_id`` is added: a password sign-in has no token. The
auth epoch's update trigger on browser_sessions (migration 0004) must now watch ``user_id`` too; on SQLite the
batch rebuild of the table drops its triggers, so both are made again.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD_UPDATE = "UPDATE OF cookie_hash, token_id, expires ON browser_sessions"
NEW_UPDATE = "UPDATE OF cookie_hash, token_id, user_id, expires ON browser_sessions"
DELETE = "DELETE ON browser_sessions"


def _create(name: str, event: str, postgres: bool) -> None:
    body = "EXECUTE FUNCTION auth_epoch_bump()" if postgres else \
        "BEGIN UPDATE auth_epoch SET value = value + 1 WHERE id = 1; END"
    op.execute(f"CREATE TRIGGER auth_epoch_{name} AFTER {event} FOR EACH ROW {body}")


def _drop(name: str, postgres: bool) -> None:
    op.execute(f"DROP TRIGGER IF EXISTS auth_epoch_{name}" + (" ON browser_sessions" if postgres else ""))


def _rebuild(update_event: str, upgrade: bool) -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _drop("browser_sessions_update", postgres)
    _drop("browser_sessions_delete", postgres)
    with op.batch_alter_table("browser_sessions") as batch:
        if upgrade:
            batch.add_column(sa.Column("user_id", sa.Integer, nullable=True))
            batch.create_foreign_key("fk_browser_sessions_user_id", "users", ["user_id"], ["id"], ondelete="CASCADE")
            batch.create_index("ix_browser_sessions_user_id", ["user_id"])
            batch.alter_column("token_id", existing_type=sa.Integer, nullable=True)
        else:
            batch.drop_index("ix_browser_sessions_user_id")
            batch.drop_constraint("fk_browser_sessions_user_id", type_="foreignkey")
            batch.drop_column("user_id")
            batch.alter_column("token_id", existing_type=sa.Integer, nullable=False)
    _create("browser_sessions_delete", DELETE, postgres)
    _create("browser_sessions_update", update_event, postgres)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(255), nullable=True))
    _rebuild(NEW_UPDATE, upgrade=True)


def downgrade() -> None:
    op.execute("DELETE FROM browser_sessions WHERE token_id IS NULL")
    _rebuild(OLD_UPDATE, upgrade=False)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_hash")
