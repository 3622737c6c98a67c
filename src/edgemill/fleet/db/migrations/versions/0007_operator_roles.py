"""operator keys: role, expiry, creator; the audit trail of state-changing operator requests, and the
per-day counts of the events folded past its retention period

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        # Every key made before roles existed could do everything: it stays an admin key.
        batch.add_column(sa.Column('role', sa.String(length=16), nullable=False, server_default='admin'))
        batch.add_column(sa.Column('expires_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('created_by', sa.String(length=128), nullable=True))
    op.create_table(
        'audit_events',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('key_name', sa.String(length=128), nullable=True),
        sa.Column('role', sa.String(length=16), nullable=True),
        sa.Column('remote', sa.String(length=64), nullable=False),
        sa.Column('method', sa.String(length=8), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('operation', sa.String(length=256), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
    )
    op.create_index('ix_audit_events_at', 'audit_events', ['at'])
    op.create_index('ix_audit_events_key_name', 'audit_events', ['key_name'])
    op.create_index('ix_audit_events_operation', 'audit_events', ['operation'])
    op.create_table(
        'audit_folds',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('day', sa.Float(), nullable=False),
        sa.Column('key_name', sa.String(length=128), nullable=False),
        sa.Column('operation', sa.String(length=256), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('events', sa.Integer(), nullable=False),
    )
    op.create_index('ix_audit_folds_day', 'audit_folds', ['day'])


def downgrade() -> None:
    op.drop_index('ix_audit_folds_day', table_name='audit_folds')
    op.drop_table('audit_folds')
    op.drop_index('ix_audit_events_operation', table_name='audit_events')
    op.drop_index('ix_audit_events_key_name', table_name='audit_events')
    op.drop_index('ix_audit_events_at', table_name='audit_events')
    op.drop_table('audit_events')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('created_by')
        batch.drop_column('expires_at')
        batch.drop_column('role')
