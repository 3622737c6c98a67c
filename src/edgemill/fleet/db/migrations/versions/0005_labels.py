"""labels: what each capture answered, the operator's label for it, and accuracy alerts' minimum count

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('captures') as batch:
        batch.add_column(sa.Column('model_version', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('created_unix', sa.Float(), nullable=True))
        batch.add_column(sa.Column('task', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('classes', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('prediction', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('label', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('labeled_by', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('labeled_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('previous_label', sa.JSON(), nullable=True))
    op.create_index('ix_captures_model_created', 'captures', ['model_name', 'created_unix'])
    with op.batch_alter_table('alert_rules') as batch:
        batch.add_column(sa.Column('min_samples', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('alert_rules') as batch:
        batch.drop_column('min_samples')
    op.drop_index('ix_captures_model_created', 'captures')
    with op.batch_alter_table('captures') as batch:
        for column in ('previous_label', 'labeled_at', 'labeled_by', 'label', 'prediction', 'classes', 'task',
                       'created_unix', 'model_version'):
            batch.drop_column(column)
