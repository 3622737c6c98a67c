"""Thin HTTP translators: parse, authorize, call the core, shape the answer (schemas)."""
