"""Replicas: the server process that launched a job or is starting or stopping a session.

With several servers on one PostgreSQL, the leader of a role (services/leadership.py) must tell a launch or a
start that another replica is still carrying out from one whose replica died: it follows or takes over the latter
only, testing the recorded replica's advisory lock.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("replica", sa.String(64), nullable=True))
    op.add_column("sessions", sa.Column("replica", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "replica")
    op.drop_column("jobs", "replica")
