"""audit truncate: PostgreSQL refuses TRUNCATE on audit_events (security review 11.8)

0001's row triggers refuse UPDATE and DELETE, but TRUNCATE fires no row trigger: it
emptied the audit trail, directly or reached through `TRUNCATE users CASCADE` (audit rows
reference users and requests). A statement-level BEFORE TRUNCATE trigger, which PostgreSQL
also fires for tables a CASCADE reaches, refuses it with the same message.

The trigger stops the application's role and a careless owner alike; it does not stop the
table's owner from dropping or disabling it, which is why the desk runs under a role that
does not own its tables (README "Running in production"). Like every ordinary trigger it
does not fire with `session_replication_role = replica`, which only a superuser (or a role
granted SET on that parameter) may choose: the test suite's cleanup relies on that.

SQLite has no TRUNCATE: its nearest, `DELETE FROM audit_events` without a WHERE, is a
DELETE and already meets 0001's `audit_events_no_delete` trigger (a table with triggers
never gets SQLite's truncate optimisation). Nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    # 0001's function raises whatever the event; a statement-level trigger may use it too.
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
