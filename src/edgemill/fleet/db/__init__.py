"""Persistence: tables, the engine and sessions, Alembic migrations."""

from .engine import Database, database_unavailable, floor_div, open_database

__all__ = ["Database", "database_unavailable", "floor_div", "open_database"]
