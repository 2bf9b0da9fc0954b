"""CDs in the browser: an upload per CD and its files (issue 12)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 16:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

STATES = ('uploading', 'scanning', 'scanned', 'sending', 'sent', 'failed', 'purged')


def upgrade():
    op.create_table(
        'cd_uploads',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('request_id', sa.Integer(), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('state', sa.Enum(*STATES, name='cd_upload_state', native_enum=False, length=12,
                                   create_constraint=True), nullable=False),
        sa.Column('files_expected', sa.Integer(), nullable=False),
        sa.Column('bytes_expected', sa.BigInteger(), nullable=False),
        sa.Column('bytes_received', sa.BigInteger(), nullable=False),
        sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('scan_done', sa.Integer(), nullable=False),
        sa.Column('scan_total', sa.Integer(), nullable=False),
        sa.Column('scan_json', sa.Text(), nullable=False),
        sa.Column('scanned_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('error', sa.String(length=500), nullable=False),
        sa.Column('transfer_id', sa.Integer(), nullable=True),
        sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('purge_reason', sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_cd_uploads_created_by_id_users')),
        sa.ForeignKeyConstraint(['request_id'], ['requests.id'], name=op.f('fk_cd_uploads_request_id_requests')),
        sa.ForeignKeyConstraint(['transfer_id'], ['transfers.id'], name=op.f('fk_cd_uploads_transfer_id_transfers')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cd_uploads')),
    )
    with op.batch_alter_table('cd_uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cd_uploads_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cd_uploads_state'), ['state'], unique=False)
    op.create_table(
        'cd_files',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('upload_id', sa.Integer(), nullable=False),
        sa.Column('relpath', sa.String(length=500), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('received', sa.BigInteger(), nullable=False),
        sa.Column('refused', sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(['upload_id'], ['cd_uploads.id'], name=op.f('fk_cd_files_upload_id_cd_uploads'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cd_files')),
        sa.UniqueConstraint('upload_id', 'relpath', name=op.f('uq_cd_files_upload_id')),
    )
    with op.batch_alter_table('cd_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cd_files_upload_id'), ['upload_id'], unique=False)


def downgrade():
    with op.batch_alter_table('cd_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cd_files_upload_id'))
    op.drop_table('cd_files')
    with op.batch_alter_table('cd_uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cd_uploads_state'))
        batch_op.drop_index(batch_op.f('ix_cd_uploads_request_id'))
    op.drop_table('cd_uploads')
