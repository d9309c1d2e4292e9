"""Teacher views: what the self-teacher saw and said about each attempt of an SDPO round.

Revision ID: b7e4f2a91c3d
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'b7e4f2a91c3d'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('teacher_views',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('distilled', sa.Boolean(), nullable=False),
    sa.Column('demonstration', sa.Integer(), nullable=True),
    sa.Column('feedback', sa.Boolean(), nullable=False),
    sa.Column('context', sa.Text(), nullable=False),
    sa.Column('credit', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_teacher_views_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_teacher_views')),
    sa.UniqueConstraint('job_id', 'round', 'index', name='uq_teacher_views_job_round_index')
    )


def downgrade() -> None:
    op.drop_table('teacher_views')
