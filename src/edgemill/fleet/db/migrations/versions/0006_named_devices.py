"""deployments: whether the operator named the devices (a device that joins the fleet later is added
to the fleet's current deployments, not to one limited to named devices)

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('named_devices', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('named_devices')
