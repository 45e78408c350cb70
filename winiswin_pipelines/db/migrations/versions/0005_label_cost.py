"""labels net of costs: training_features.label_cost

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 20:45:00.000000

The round-trip cost (taker fees and a share of the spread, as a fraction) that a label's horizontal
barriers had to exceed; NULL where the labels were computed gross of costs, as every earlier row was.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('training_features', sa.Column('label_cost', sa.DOUBLE_PRECISION(), nullable=True))


def downgrade() -> None:
    op.drop_column('training_features', 'label_cost')
