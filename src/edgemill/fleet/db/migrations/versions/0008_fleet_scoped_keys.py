"""operator keys scoped to fleets; the fleet each audit event touched

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        # NULL: every fleet (every key made before scopes existed); else a JSON list of fleet names.
        batch.add_column(sa.Column('fleets', sa.JSON(), nullable=True))
    with op.batch_alter_table('audit_events') as batch:
        batch.add_column(sa.Column('fleet', sa.String(length=128), nullable=True))
    op.create_index('ix_audit_events_fleet', 'audit_events', ['fleet'])


def downgrade() -> None:
    op.drop_index('ix_audit_events_fleet', table_name='audit_events')
    with op.batch_alter_table('audit_events') as batch:
        batch.drop_column('fleet')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('fleets')
