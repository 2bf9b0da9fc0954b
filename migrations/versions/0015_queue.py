"""queue: indexes for the desk's queue at 100,000 requests (issue 15.4)

`requests (status, created_at, id, priority, requester_id, status_changed_at)` replaces
`(status, created_at, id)`, of which it is the same order: a tab's page still walks each
status newest first and stops once the page is full, and what Action Required checks of
each row (Blue Light or not; has the requester written since the status changed?) is in
the index, so that a page's ids and each tab's count read the index alone.
`messages (request_id, kind, author_id, created_at)` answers "did the requester write
since?" with one probe of the index per request (the same check gives the rows'
"Requester replied" badge). Measured at 100,000 requests, the requester-replied count:
1.6 ms instead of 6 on SQLite, 2 instead of 12 on PostgreSQL (bench/desk.py). Plain
CREATE/DROP INDEX on both databases.

Revision ID: 0015_queue
Revises: 0014_reports
Create Date: 2026-12-06 10:00:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0015_queue'
down_revision = '0014_reports'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_requests_status_created_queue', 'requests',
                    ['status', 'created_at', 'id', 'priority', 'requester_id', 'status_changed_at'], unique=False)
    op.drop_index('ix_requests_status_created_id', table_name='requests')
    op.create_index('ix_messages_request_kind_author', 'messages',
                    ['request_id', 'kind', 'author_id', 'created_at'], unique=False)


def downgrade():
    op.drop_index('ix_messages_request_kind_author', table_name='messages')
    op.create_index('ix_requests_status_created_id', 'requests', ['status', 'created_at', 'id'], unique=False)
    op.drop_index('ix_requests_status_created_queue', table_name='requests')
