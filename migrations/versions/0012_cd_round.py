"""the CD round: Awaiting Drop-off, Collected and Uploaded (issue 12.5)

requests.status stays VARCHAR(20); its CHECK constraint (ck_requests_status, the naming
convention's name for the `status` enum) is rebuilt with the three new values, and the CD
requests still in New, which in the new workflow would be waiting for their CDs to be
handed in, move to Awaiting Drop-off. Downgrade moves CD requests back to where the old
vocabulary can hold them (Awaiting Drop-off and Collected to New, Uploaded to Accepted)
before the old constraint returns. SQLite cannot alter a constraint, hence batch mode.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# The vocabularies as of this revision and the one before, frozen here as migrations must be.
OLD = ('New', 'Awaiting Details', 'Accepted', 'Download Request', 'Downloading', 'Uploading', 'On IEP',
       'Delivered', 'Completed', 'Declined', 'Failed', 'Cancelled', 'Purged')
NEW = ('New', 'Awaiting Details', 'Awaiting Drop-off', 'Collected', 'Uploaded', 'Accepted', 'Download Request',
       'Downloading', 'Uploading', 'On IEP', 'Delivered', 'Completed', 'Declined', 'Failed', 'Cancelled', 'Purged')
BACK = {'Awaiting Drop-off': 'New', 'Collected': 'New', 'Uploaded': 'Accepted'}


def _check(values):
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _restore_sqlite_expression_indexes():
    # A batch operation on SQLite rebuilds the table from what SQLAlchemy reflects, and it
    # cannot reflect expression indexes: put back the two on upper(family_name) (0002).
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE INDEX IF NOT EXISTS ix_requests_family_name_upper ON requests (upper(family_name))")
        op.execute("CREATE INDEX IF NOT EXISTS ix_requests_family_name_upper_sort ON requests (upper(family_name), id)")


def _rebuild_check(values):
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_requests_status'), type_='check')
        batch_op.create_check_constraint(op.f('ck_requests_status'), _check(values))
    _restore_sqlite_expression_indexes()


def upgrade():
    _rebuild_check(NEW)
    op.execute("UPDATE requests SET status = 'Awaiting Drop-off' WHERE kind = 'cd' AND status = 'New'")


def downgrade():
    for new, old in BACK.items():
        op.execute(f"UPDATE requests SET status = '{old}' WHERE status = '{new}'")  # noqa: S608 - constants above
    _rebuild_check(OLD)
