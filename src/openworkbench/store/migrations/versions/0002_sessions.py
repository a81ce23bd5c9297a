"""IDE sessions and browser sign-ins.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from openworkbench.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(8), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("workbench", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(8), nullable=False),
        sa.Column("url", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status_detail", sa.Text, nullable=False),
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("working_dir", sa.Text, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("socket_path", sa.Text, nullable=False),
        sa.Column("state_dir", sa.Text, nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("suspend_manifest", sa.JSON, nullable=False),
        sa.Column("suspend_size", sa.Integer, nullable=True),
        sa.Column("executing", sa.Boolean, nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("last_state_updated", UTCDateTime(), nullable=False),
        sa.Column("last_used", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_state", "sessions", ["state"])
    op.create_table(
        "browser_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cookie_hash", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "token_id", sa.Integer, sa.ForeignKey("api_tokens.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_browser_sessions_token_id", "browser_sessions", ["token_id"])


def downgrade() -> None:
    op.drop_table("browser_sessions")
    op.drop_table("sessions")
