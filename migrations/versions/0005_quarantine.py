"""quarantine: instances the gateway refused (issue 8 point 9)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 03:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('quarantined_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sender_ae', sa.String(length=16), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('patient_name', sa.String(length=200), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=300), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name='pk_quarantined_files')
    )
    with op.batch_alter_table('quarantined_files', schema=None) as batch_op:
        batch_op.create_index('ix_quarantined_files_purged_at_received_at', ['purged_at', 'received_at'],
                              unique=False)


def downgrade():
    with op.batch_alter_table('quarantined_files', schema=None) as batch_op:
        batch_op.drop_index('ix_quarantined_files_purged_at_received_at')

    op.drop_table('quarantined_files')
