"""PAS extracts: the admin's upload, previewed then applied (issue 14.3)

pas_extracts keeps each uploaded extract while a job checks it and until it is applied
(its bytes, so Apply applies exactly the file previewed; the preview's bad lines and the
jobs' progress), and a record of each applied one, by the admin page or by `pas import`:
when, how big, which file, by whom, and what it did.

Revision ID: 0014_pasup
Revises: 0013_transfers
Create Date: 2026-12-15 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014_pasup'
down_revision = '0013_transfers'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'pas_extracts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('file_name', sa.String(length=255), nullable=False),
        sa.Column('size_bytes', sa.Integer(), nullable=False),
        sa.Column('rows', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('plan', sa.String(length=64), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=True),
        sa.Column('preview_json', sa.Text(), nullable=False),
        sa.Column('message', sa.String(length=500), nullable=False),
        sa.Column('done', sa.Integer(), nullable=False),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('uploaded_by_id', sa.Integer(), nullable=True),
        sa.Column('actor', sa.String(length=254), nullable=False),
        sa.Column('uploaded_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('added', sa.Integer(), nullable=False),
        sa.Column('updated', sa.Integer(), nullable=False),
        sa.Column('unchanged', sa.Integer(), nullable=False),
        sa.Column('rejected', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['uploaded_by_id'], ['users.id'], name=op.f('fk_pas_extracts_uploaded_by_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pas_extracts')),
        sa.UniqueConstraint('token', name=op.f('uq_pas_extracts_token')),
    )
    with op.batch_alter_table('pas_extracts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pas_extracts_applied_at'), ['applied_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_pas_extracts_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_pas_extracts_uploaded_by_id'), ['uploaded_by_id'], unique=False)


def downgrade():
    with op.batch_alter_table('pas_extracts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pas_extracts_uploaded_by_id'))
        batch_op.drop_index(batch_op.f('ix_pas_extracts_state'))
        batch_op.drop_index(batch_op.f('ix_pas_extracts_applied_at'))
    op.drop_table('pas_extracts')
