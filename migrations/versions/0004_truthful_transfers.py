"""truthful transfers: instances named by series and number, C-MOVE exports claim their study

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 02:50:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('transfer_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('series_uid', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('series_number', sa.String(length=12), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('series_description', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('instance_number', sa.String(length=12), nullable=False, server_default=''))
    # The defaults only fill existing rows; the models set them from Python.
    with op.batch_alter_table('transfer_items', schema=None) as batch_op:
        for column in ('series_uid', 'series_number', 'series_description', 'instance_number'):
            batch_op.alter_column(column, server_default=None)
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('moving_study_uid', sa.String(length=64), nullable=False, server_default=''))
        batch_op.create_index(batch_op.f('ix_transfers_moving_study_uid'), ['moving_study_uid'], unique=False)
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.alter_column('moving_study_uid', server_default=None)


def downgrade():
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transfers_moving_study_uid'))
        batch_op.drop_column('moving_study_uid')
    with op.batch_alter_table('transfer_items', schema=None) as batch_op:
        batch_op.drop_column('instance_number')
        batch_op.drop_column('series_description')
        batch_op.drop_column('series_number')
        batch_op.drop_column('series_uid')
