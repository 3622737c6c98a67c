"""scale: desired-state change stamps, metric totals on the device row, hourly metric rollups

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('devices') as batch:
        batch.add_column(sa.Column('desired_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('metric_totals', sa.JSON(), nullable=True))
        batch.create_index('ix_devices_desired_at', ['desired_at'])
    op.create_table('metric_rollups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('package_id', sa.String(length=128), nullable=True),
    sa.Column('t', sa.Float(), nullable=False),
    sa.Column('span_s', sa.Float(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('errors', sa.BigInteger(), nullable=False),
    sa.Column('p50_ms', sa.Float(), nullable=True),
    sa.Column('p95_ms', sa.Float(), nullable=True),
    sa.Column('p99_ms', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_metric_rollups_device_t', 'metric_rollups', ['device_id', 't'])
    op.create_index('ix_metric_rollups_t', 'metric_rollups', ['t'])


def downgrade() -> None:
    op.drop_index('ix_metric_rollups_t', table_name='metric_rollups')
    op.drop_index('ix_metric_rollups_device_t', table_name='metric_rollups')
    op.drop_table('metric_rollups')
    with op.batch_alter_table('devices') as batch:
        batch.drop_index('ix_devices_desired_at')
        batch.drop_column('metric_totals')
        batch.drop_column('desired_at')
