"""RIS record: the fix-up and where each exam code came from (issue 13.9)

ris_entries gains the sender's Patient ID and issuer (filed in PACS under the S number),
the exam code's source ('study' / 'exam line'), a code-missing flag and a note on how the
code was found. Existing entries: the sender's ids are copied from their inbound study;
a code they have came from an exam line (the only source until now); an empty one is
flagged missing.

Revision ID: 0013_transfers
Revises: 0013_life
Create Date: 2026-12-08 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013_transfers'
down_revision = '0013_life'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('ris_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sender_patient_id', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('sender_issuer', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('code_source', sa.String(length=20), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('code_missing', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('code_note', sa.String(length=300), nullable=False, server_default=''))
    op.execute("UPDATE ris_entries SET "
               "sender_patient_id = COALESCE((SELECT s.patient_id FROM inbound_studies s "
               "WHERE s.study_uid = ris_entries.study_uid), ''), "
               "sender_issuer = COALESCE((SELECT s.issuer_of_patient_id FROM inbound_studies s "
               "WHERE s.study_uid = ris_entries.study_uid), '')")
    op.execute("UPDATE ris_entries SET code_source = 'exam line' WHERE exam_code <> ''")
    op.execute("UPDATE ris_entries SET code_missing = "
               + ("true" if op.get_bind().dialect.name == "postgresql" else "1") + " WHERE exam_code = ''")
    # The defaults only fill existing rows; the model sets them from Python.
    with op.batch_alter_table('ris_entries', schema=None) as batch_op:
        for column in ('sender_patient_id', 'sender_issuer', 'code_source', 'code_missing', 'code_note'):
            batch_op.alter_column(column, server_default=None)


def downgrade():
    with op.batch_alter_table('ris_entries', schema=None) as batch_op:
        batch_op.drop_column('code_note')
        batch_op.drop_column('code_missing')
        batch_op.drop_column('code_source')
        batch_op.drop_column('sender_issuer')
        batch_op.drop_column('sender_patient_id')
