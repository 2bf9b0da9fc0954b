"""one active transfer: study_key and dest_key on transfers, and a partial unique index

At most one unfinished transfer (queued, running, verifying, waiting_confirmation) per
request, direction, destination and study set (issue 8.8). Only this column pair and this
index live here, so the revision can be re-pointed behind other people's.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00

"""
import hashlib
import json

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

INDEX = 'uq_transfers_one_unfinished'
UNFINISHED = ('queued', 'running', 'verifying', 'waiting_confirmation')
WHERE = sa.text("state IN (" + ", ".join(f"'{s}'" for s in UNFINISHED) + ")")


def _study_key(uids):
    # The same as app.transfers.service.study_key, frozen here as migrations must be.
    return hashlib.sha1("\n".join(sorted(set(uids))).encode("utf-8")).hexdigest()


def upgrade():
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_key', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('dest_key', sa.Integer(), nullable=True))

    conn = op.get_bind()
    transfers = sa.table('transfers', sa.column('id', sa.Integer), sa.column('study_key', sa.String),
                         sa.column('dest_key', sa.Integer))
    seen = set()
    rows = conn.execute(sa.text(
        'SELECT id, request_id, direction, dest_node_id, state, study_uids FROM transfers ORDER BY id'))
    for row in rows.all():
        uids = row.study_uids
        if isinstance(uids, str):  # SQLite hands JSON back as text
            uids = json.loads(uids or '[]')
        key, dest = _study_key(uids or []), row.dest_node_id or 0
        group = (row.request_id, row.direction, dest, key)
        if row.state in UNFINISHED and row.request_id is not None:
            if group in seen:
                # A twin made before this rule (the double-press bug): the oldest keeps the
                # key; later twins get a destination key no node has, so the index can be
                # built without stopping a transfer that is under way.
                dest = -row.id
            seen.add(group)
        conn.execute(transfers.update().where(transfers.c.id == row.id).values(study_key=key, dest_key=dest))

    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.alter_column('study_key', existing_type=sa.String(length=40), nullable=False)
        batch_op.alter_column('dest_key', existing_type=sa.Integer(), nullable=False)
    op.create_index(INDEX, 'transfers', ['request_id', 'direction', 'dest_key', 'study_key'], unique=True,
                    sqlite_where=WHERE, postgresql_where=WHERE)


def downgrade():
    op.drop_index(INDEX, table_name='transfers')
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_column('dest_key')
        batch_op.drop_column('study_key')
