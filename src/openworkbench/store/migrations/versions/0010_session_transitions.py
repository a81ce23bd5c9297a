"""Sessions' state history: every change of state with its time and reason (sessions/transitions.py).

A table of its own rather than columns on ``sessions``: the session row (read by every get_session) stays
as it was, and the history of a session is one indexed range.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from openworkbench.store.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_transitions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.String(8), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_session_transitions_session", "session_transitions", ["session_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_session_transitions_session", "session_transitions")
    op.drop_table("session_transitions")
