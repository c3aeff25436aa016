"""Alembic migrations of the registry schema (``fleet_server.schema`` runs them)."""
