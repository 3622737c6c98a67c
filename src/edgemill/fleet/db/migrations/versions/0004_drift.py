"""drift: package baselines, devices' drift counters, closed drift buckets, pinned references, drift alert features

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('drift_samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('package_id', sa.String(length=128), nullable=False),
    sa.Column('t', sa.Float(), nullable=False),
    sa.Column('span_s', sa.Float(), nullable=False),
    sa.Column('samples', sa.BigInteger(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('input_psi', sa.Float(), nullable=True),
    sa.Column('prediction_psi', sa.Float(), nullable=True),
    sa.Column('scores', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_drift_samples_t', 'drift_samples', ['t'])
    op.create_index('ix_drift_samples_model_t', 'drift_samples', ['model_name', 't'])
    op.create_index('ix_drift_samples_device_t', 'drift_samples', ['device_id', 't'])
    op.create_table('drift_references',
    sa.Column('package_id', sa.String(length=128), nullable=False),
    sa.Column('start', sa.Float(), nullable=False),
    sa.Column('end', sa.Float(), nullable=False),
    sa.Column('samples', sa.BigInteger(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('package_id')
    )
    with op.batch_alter_table('devices') as batch:
        batch.add_column(sa.Column('drift_state', sa.JSON(), nullable=True))
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('baseline', sa.JSON(), nullable=True))
    with op.batch_alter_table('alert_rules') as batch:
        batch.add_column(sa.Column('feature', sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('alert_rules') as batch:
        batch.drop_column('feature')
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('baseline')
    with op.batch_alter_table('devices') as batch:
        batch.drop_column('drift_state')
    op.drop_table('drift_references')
    op.drop_index('ix_drift_samples_device_t', 'drift_samples')
    op.drop_index('ix_drift_samples_model_t', 'drift_samples')
    op.drop_index('ix_drift_samples_t', 'drift_samples')
    op.drop_table('drift_samples')
