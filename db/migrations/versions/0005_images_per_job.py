"""Images belong to the job that found them: the same study submitted from two folders keeps both sets of files.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Before, image rows were unique per (study, relpath), so a study submitted again from another folder
kept the first folder's paths, and a worker read files outside the folder it was given. The table is
rebuilt (create, copy, drop, rename: the same on SQLite and PostgreSQL; no view or key refers to it),
and existing rows go to the first job that included their study.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = "id, study_id, path, relpath, sha256, size_bytes, width, height, error"


def upgrade() -> None:
    op.create_table(
        "images_new",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("relpath", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "study_id", "relpath", name="uq_images_job_study_relpath"),
    )
    op.execute(
        f"INSERT INTO images_new (job_id, {COLUMNS}) "
        f"SELECT (SELECT MIN(js.job_id) FROM job_studies js WHERE js.study_id = images.study_id), {COLUMNS} "
        "FROM images WHERE EXISTS (SELECT 1 FROM job_studies js WHERE js.study_id = images.study_id)"
    )
    op.drop_table("images")
    op.rename_table("images_new", "images")
    if op.get_bind().dialect.name == "postgresql":  # keep the id sequence going past the copied rows
        op.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), COALESCE(MAX(id), 0) + 1, false) "
                   "FROM images")
    op.create_index("ix_images_job_id", "images", ["job_id"])
    op.create_index("ix_images_study_id", "images", ["study_id"])
    op.create_index("ix_images_sha256", "images", ["sha256"])


def downgrade() -> None:
    raise NotImplementedError("images per job cannot be merged back per study without losing files")
