"""places: an institution's site and whether it is offered (issue 14.2)

institutions gains `site` (free text, e.g. "Glenfield") and `active`: a deactivated
institution is no longer offered on the request forms, and the requests that name it keep
it. Existing institutions are active with no site. DICOM nodes already have `active`
(0001); nothing changes there.

Revision ID: 0014_places
Revises: 0014_pasup
Create Date: 2027-01-10 09:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014_places'
down_revision = '0014_pasup'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('institutions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('site', sa.String(length=120), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('active', sa.Boolean(), nullable=False, server_default=sa.true()))
    # The defaults only fill existing rows; the model sets them from Python.
    with op.batch_alter_table('institutions', schema=None) as batch_op:
        batch_op.alter_column('site', server_default=None)
        batch_op.alter_column('active', server_default=None)


def downgrade():
    with op.batch_alter_table('institutions', schema=None) as batch_op:
        batch_op.drop_column('active')
        batch_op.drop_column('site')
