"""When a job started running and when it ended (the product's runningTimestamp and terminatedTime).

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


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("running_time", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("terminated_time", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("terminated_time")
        batch.drop_column("running_time")
