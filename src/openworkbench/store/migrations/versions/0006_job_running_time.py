"""When a job was first seen running (the product's runningTimestamp; its terminatedTime is 0005's end_time).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from openworkbench.store.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("running_time", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("running_time")
