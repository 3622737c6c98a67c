"""retention: the watermark of metric-sample folding; the digest of what a device last reported running

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_marks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('watermark', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('devices') as batch:
        batch.add_column(sa.Column('models_digest', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('devices') as batch:
        batch.drop_column('models_digest')
    op.drop_table('retention_marks')
