"""Persistence: tables, the engine and sessions, Alembic migrations."""

from .engine import Database, open_database

__all__ = ["Database", "open_database"]
