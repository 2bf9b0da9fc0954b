"""outbox event: which notice an e-mail carries (issue 13.5)

The requester's Delivered notice, once sent, completes the request (DESIGN: Completed is
"requester notified"): the sender has to know which rows are that notice. `event` names
what a row carries: a status's name for a status notice (e.g. 'Delivered'), 'export-sent',
'desk-message'. Nullable: rows queued before it have none, and mail that is no notice
needs none.

The pending rows already in the outbox get their event from their dedup key
(`<call ref>:<event>:<time>:<recipient>`, app/workflow/notices.py), so a Delivered notice
still waiting to be sent completes its request too. Rows already sent are history.

Revision ID: 0013_life
Revises: 0012
Create Date: 2026-12-20 09:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013_life'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('outbox_emails', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event', sa.String(length=40), nullable=True))
    outbox = sa.table('outbox_emails', sa.column('id', sa.Integer), sa.column('dedup_key', sa.String),
                      sa.column('status', sa.String), sa.column('event', sa.String))
    bind = op.get_bind()
    pending = bind.execute(sa.select(outbox.c.id, outbox.c.dedup_key).where(
        outbox.c.status == 'pending', outbox.c.dedup_key.is_not(None))).all()
    for row_id, key in pending:
        parts = key.split(':')
        if len(parts) >= 4 and parts[1]:
            bind.execute(sa.update(outbox).where(outbox.c.id == row_id).values(event=parts[1][:40]))


def downgrade():
    with op.batch_alter_table('outbox_emails', schema=None) as batch_op:
        batch_op.drop_column('event')
