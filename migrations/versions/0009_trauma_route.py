"""trauma route: why a trauma request has no NHS number; the study each exam line names

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 08:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def _restore_sqlite_expression_indexes():
    # A batch operation on SQLite rebuilds the table from what SQLAlchemy reflects, and it
    # cannot reflect expression indexes: put back the two on upper(family_name) (0002).
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE INDEX IF NOT EXISTS ix_requests_family_name_upper ON requests (upper(family_name))")
        op.execute("CREATE INDEX IF NOT EXISTS ix_requests_family_name_upper_sort ON requests (upper(family_name), id)")


def upgrade():
    op.add_column('requests', sa.Column('no_nhs_reason', sa.String(length=200), nullable=False, server_default=''))
    op.add_column('exam_lines', sa.Column('study_uid', sa.String(length=64), nullable=False, server_default=''))
    # The defaults only fill existing rows; the models set them from Python.
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.alter_column('no_nhs_reason', server_default=None)
    with op.batch_alter_table('exam_lines', schema=None) as batch_op:
        batch_op.alter_column('study_uid', server_default=None)
    _restore_sqlite_expression_indexes()


def downgrade():
    with op.batch_alter_table('exam_lines', schema=None) as batch_op:
        batch_op.drop_column('study_uid')
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('no_nhs_reason')
    _restore_sqlite_expression_indexes()
