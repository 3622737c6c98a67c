"""The Alembic migrations build exactly the schema the tables declare: a column added to a table
without its migration (or the reverse) fails here, not on an operator's upgraded server."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("alembic")

from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.migration import MigrationContext  # noqa: E402

from edgemill.fleet.db.engine import make_engine, upgrade  # noqa: E402
from edgemill.fleet.db.tables import Base  # noqa: E402


def test_migrations_at_head_match_the_declared_tables(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.sqlite'}")
    try:
        upgrade(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], "migrations and tables disagree (add a migration): " + repr(differences)[:2000]
