"""Audit viewer: indexes for reading the audit trail newest first, filtered (issue 14.5)

The viewer pages through audit_events by (at, id), newest first, filtered by user, request
(a call reference, or a patient's requests) or action. Each single-column index of 0001 is
replaced by one that starts with the same column and ends with (at, id), so a filtered page is
an index range read backwards, not a sort of every matching row; it still serves every
look-up the old one did (the foreign keys' included). `actor` gets one for the rows that name
no user (failed sign-ins, the system's rows). Plain CREATE/DROP INDEX, not a batch: on SQLite
a batch may copy the table, and the copy would lose the append-only triggers.

Revision ID: 0014_auditview
Revises: 0014_users
Create Date: 2026-12-10 10:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0014_auditview'
down_revision = '0014_users'
branch_labels = None
depends_on = None

# old single-column index -> (new index, its columns)
REPLACED = {
    'ix_audit_events_at': ('ix_audit_events_at_id', ['at', 'id']),
    'ix_audit_events_user_id': ('ix_audit_events_user_at_id', ['user_id', 'at', 'id']),
    'ix_audit_events_request_id': ('ix_audit_events_request_at_id', ['request_id', 'at', 'id']),
    'ix_audit_events_action': ('ix_audit_events_action_at_id', ['action', 'at', 'id']),
}


def upgrade():
    for old, (new, columns) in REPLACED.items():
        op.create_index(new, 'audit_events', columns, unique=False)
        op.drop_index(old, table_name='audit_events')
    op.create_index('ix_audit_events_actor', 'audit_events', ['actor'], unique=False)


def downgrade():
    op.drop_index('ix_audit_events_actor', table_name='audit_events')
    for old, (new, columns) in REPLACED.items():
        op.create_index(old, 'audit_events', [columns[0]], unique=False)
        op.drop_index(new, table_name='audit_events')
