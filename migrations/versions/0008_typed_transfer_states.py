"""typed transfer states: CHECK constraints on transfers.state, direction and priority

The columns stay VARCHAR of the same length and every row keeps its value: the models now
read them as enums (TransferState, Direction, Priority) and the database refuses any other
string (issue 9.3). SQLite cannot add a constraint to a table, hence batch mode (the table
is copied; its indexes, the partial `uq_transfers_one_unfinished` among them, come along).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 04:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# The vocabularies as of this revision, frozen here as migrations must be; the names are
# already the naming convention's (op.f), as the models name them.
CHECKS = {
    'ck_transfers_state': ('state', ('queued', 'running', 'verifying', 'waiting_confirmation', 'delivered',
                                     'failed', 'cancelled')),
    'ck_transfers_direction': ('direction', ('outbound', 'inbound', 'pull')),
    'ck_transfers_priority': ('priority', ('Blue Light', 'Standard', 'Batch')),
}


def upgrade():
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        for name, (column, values) in CHECKS.items():
            batch_op.create_check_constraint(op.f(name), f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")")


def downgrade():
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        for name in reversed(CHECKS):
            batch_op.drop_constraint(op.f(name), type_='check')
