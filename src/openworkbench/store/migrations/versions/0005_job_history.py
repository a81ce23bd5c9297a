"""Jobs' end time and output purge time, and the indexes of the active list and the history.

``end_time`` is filled for jobs already final from their last update, which was the one that made them
final (a final status never changes again).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from openworkbench.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FINAL = "('Finished', 'Failed', 'Killed', 'Canceled')"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("end_time", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("output_purged", UTCDateTime(), nullable=True))
    op.execute(f"UPDATE jobs SET end_time = last_update_time WHERE status IN {FINAL}")
    op.create_index("ix_jobs_end_time", "jobs", ["end_time"])
    op.create_index("ix_jobs_user_id_end_time", "jobs", ["user_id", "end_time"])
    op.create_index("ix_sessions_last_state_updated", "sessions", ["last_state_updated"])


def downgrade() -> None:
    op.drop_index("ix_sessions_last_state_updated", "sessions")
    op.drop_index("ix_jobs_user_id_end_time", "jobs")
    op.drop_index("ix_jobs_end_time", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("output_purged")
        batch.drop_column("end_time")
