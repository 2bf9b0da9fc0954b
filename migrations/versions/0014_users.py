"""Users and the training register (issue 14.1 and 14.7)

users gains must_change_password (an administrator's forced reset: the user chooses a new
password before anything else); training_records holds who was trained, by whom, when and on
what (guideline section 3: training records are held locally).

Revision ID: 0014_users
Revises: 0014_places
Create Date: 2026-12-10 09:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014_users'
down_revision = '0014_places'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('must_change_password', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    # The default only fills existing rows; the model sets it from Python.
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('must_change_password', server_default=None)
    op.create_table(
        'training_records',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('trainer_name', sa.String(length=120), nullable=False),
        sa.Column('trainer_id', sa.Integer(), nullable=True),
        sa.Column('trained_on', sa.Date(), nullable=False),
        sa.Column('topic', sa.String(length=200), nullable=False),
        sa.Column('recorded_by_id', sa.Integer(), nullable=True),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_training_records_user_id_users')),
        sa.ForeignKeyConstraint(['trainer_id'], ['users.id'], name=op.f('fk_training_records_trainer_id_users')),
        sa.ForeignKeyConstraint(['recorded_by_id'], ['users.id'],
                                name=op.f('fk_training_records_recorded_by_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_training_records')),
    )
    with op.batch_alter_table('training_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_records_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_records_trained_on'), ['trained_on'], unique=False)


def downgrade():
    with op.batch_alter_table('training_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_records_trained_on'))
        batch_op.drop_index(batch_op.f('ix_training_records_user_id'))
    op.drop_table('training_records')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('must_change_password')
