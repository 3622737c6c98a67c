"""Open the database named by a URL, bring its schema up to date, hand out sessions.

SQLite (the laptop default) gets WAL mode and a busy timeout so that two server processes on one file
wait for each other instead of failing; PostgreSQL needs nothing special.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, cast, create_engine, event, func, inspect
from sqlalchemy.engine import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ...errors import ConfigError, MissingDependencyError, UserError

log = logging.getLogger("edgemill.server")
MIGRATIONS = Path(__file__).with_name("migrations")


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self.sessions() as session:
            with session.begin():
                yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _refuse_nul_text(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                     _executemany: bool) -> None:
    """PostgreSQL cannot store a NUL character in text (SQLite can): refuse such a value on every database
    alike, as bad input naming it, before it reaches the driver as a 500."""
    rows = parameters if isinstance(parameters, list) else [parameters]
    for row in rows:
        for value in (row.values() if isinstance(row, dict) else row or ()):
            if isinstance(value, str) and "\x00" in value:
                raise UserError("a text value contains a NUL character", value=repr(value)[:120],
                                fix="remove the NUL (\\x00) characters from names, ids and labels")


def make_engine(url: str, pool_size: int = 16) -> Engine:
    engine = _make_engine(url, pool_size)
    event.listen(engine, "before_cursor_execute", _refuse_nul_text)
    return engine


def _make_engine(url: str, pool_size: int) -> Engine:
    try:
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        # The request threads are capped at pool_size (app.py), so connections are reused rather than
        # opened and closed per request; the overflow covers the background tick and the long-poll watcher.
        return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max(4, pool_size // 2))
    except (ArgumentError, ValueError) as exc:
        raise ConfigError("cannot parse the database URL", value=url,
                          expected="sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB",
                          fix="pass --db with a SQLAlchemy URL") from None
    except (NoSuchModuleError, ImportError) as exc:
        raise MissingDependencyError("the database driver is not installed", value=url,
                                     fix="pip install 'edgemill[server]' (psycopg for PostgreSQL)") from exc


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration not yet applied (idempotent; safe from several replicas)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str, migrate: bool = True, pool_size: int = 16) -> Database:
    engine = make_engine(url, pool_size)
    try:
        if migrate:
            upgrade(engine)
        elif "alembic_version" not in inspect(engine).get_table_names():
            raise ConfigError("the database has no edgemill schema", value=url,
                              fix="start the server once with migrations on (the default)")
    except OperationalError as exc:
        raise ConfigError("cannot open the database", value=url, expected=str(exc.orig).strip()[:200],
                          fix="check the URL, that the server is running and the user may connect") from None
    return Database(engine)


def database_unavailable(exc: BaseException) -> bool:
    """True for a database that cannot be reached or refused for a moment (connection refused or
    dropped, no pooled connection free in time, SQLite busy): worth retrying, unlike a broken constraint."""
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated)


def floor_div(dialect: str, value: Any, width: float) -> Any:
    """SQL for ``floor(value / width)`` as an integer, on either database. SQLite has no floor(): its
    CAST truncates, which is floor for the non-negative values (times, offsets) this is used on, and
    rounds a small negative up to 0."""
    if dialect == "postgresql":
        return cast(func.floor(value / width), Integer)
    return cast(value / width, Integer)
