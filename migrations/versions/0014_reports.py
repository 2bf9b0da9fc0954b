"""reports: indexes for the compliance report (issue 14.6)

The report follows the requests submitted in a period to their status changes in the
audit trail: `audit_events (request_id, action)` finds a request's status-change rows
without reading its views and downloads; without it SQLite walks every status change the
desk ever recorded for a month's report. `transfers (created_at)`: the transfers started
in a period, without a full scan. Plain CREATE INDEX on both databases (no batch mode: on
SQLite a batch would copy audit_events and drop its append-only triggers).

Revision ID: 0014_reports
Revises: 0014_auditview
Create Date: 2026-12-10 10:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0014_reports'
down_revision = '0014_auditview'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_audit_events_request_action', 'audit_events', ['request_id', 'action'], unique=False)
    op.create_index('ix_transfers_created_at', 'transfers', ['created_at'], unique=False)


def downgrade():
    op.drop_index('ix_transfers_created_at', table_name='transfers')
    op.drop_index('ix_audit_events_request_action', table_name='audit_events')
