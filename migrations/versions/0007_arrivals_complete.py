"""arrivals complete: how the desk knows a study has finished arriving; partial downloads

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 03:10:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('inbound_studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('complete_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sender_done_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sender_released', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('ris_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('partial', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('note', sa.String(length=300), nullable=False, server_default=''))
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('partial_ok', sa.Boolean(), nullable=False, server_default=sa.false()))
    # Studies already on the gateway arrived before the desk knew how to tell: take them as
    # the senders left them (complete), as the desk did until now.
    op.execute("UPDATE inbound_studies SET sender_done_at = last_received_at, sender_released = "
               + ("true" if op.get_bind().dialect.name == "postgresql" else "1"))
    # The defaults only fill existing rows; the models set them from Python.
    with op.batch_alter_table('inbound_studies', schema=None) as batch_op:
        batch_op.alter_column('sender_released', server_default=None)
    with op.batch_alter_table('ris_entries', schema=None) as batch_op:
        batch_op.alter_column('partial', server_default=None)
        batch_op.alter_column('note', server_default=None)
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.alter_column('partial_ok', server_default=None)


def downgrade():
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_column('partial_ok')
    with op.batch_alter_table('ris_entries', schema=None) as batch_op:
        batch_op.drop_column('note')
        batch_op.drop_column('partial')
    with op.batch_alter_table('inbound_studies', schema=None) as batch_op:
        batch_op.drop_column('sender_released')
        batch_op.drop_column('sender_done_at')
        batch_op.drop_column('complete_at')
