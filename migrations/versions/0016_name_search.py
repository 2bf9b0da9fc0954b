"""name search: the patient-name indexes carry what the queue reads of each row (issue 15.4)

A name search ("smi": 3,331 of 100,000 requests) reads every row it finds twice: once for
the page (their dates, to sort them) and once for the tabs' counts (status, priority,
requester, when the status changed). From the table, that was a random read per row:
3-4 ms each on SQLite, 8 ms for the counts on PostgreSQL. The indexes now hold those
columns, and both reads are index-only (SQLite 0.6 ms each, PostgreSQL 1 ms).

- Both databases: `ix_requests_family_name_queue` (upper(family_name), id, status,
  priority, requester_id, status_changed_at, created_at) replaces
  `ix_requests_family_name_upper_sort` (upper(family_name), id), of which it is the same
  order: the patient sort's keyset pages walk it as before.
- SQLite: `ix_requests_family_name_upper` (upper(family_name)) goes. SQLite reads the
  name range from the wide index; given the narrow one too, it picks the narrow one and
  reads the table again.
- PostgreSQL: `ix_requests_family_name_upper` stays the LIKE's index (text_pattern_ops,
  which cannot sort) and INCLUDEs the id, the same columns and family_name itself: PostgreSQL
  reads an expression index alone only when the expression's column is in it.

SQLite cannot reflect expression indexes: a later batch operation on `requests` must
create `ix_requests_family_name_queue` again, as 0012 did for the older two.

Revision ID: 0016_name_search
Revises: 0015_queue
Create Date: 2026-12-06 09:30:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0016_name_search'
down_revision = '0015_queue'
branch_labels = None
depends_on = None

ROW = "status, priority, requester_id, status_changed_at, created_at"


def upgrade():
    op.execute(f"CREATE INDEX ix_requests_family_name_queue ON requests (upper(family_name), id, {ROW})")
    op.execute("DROP INDEX ix_requests_family_name_upper_sort")
    op.execute("DROP INDEX ix_requests_family_name_upper")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_requests_family_name_upper ON requests (upper(family_name) text_pattern_ops) "
                   f"INCLUDE (family_name, id, {ROW})")


def downgrade():
    op.execute("DROP INDEX IF EXISTS ix_requests_family_name_upper")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_requests_family_name_upper ON requests (upper(family_name) text_pattern_ops)")
    else:
        op.execute("CREATE INDEX ix_requests_family_name_upper ON requests (upper(family_name))")
    op.execute("CREATE INDEX ix_requests_family_name_upper_sort ON requests (upper(family_name), id)")
    op.execute("DROP INDEX ix_requests_family_name_queue")
