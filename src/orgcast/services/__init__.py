"""Use cases: tenants, messages, presence, limits. Each owns its transaction."""

from ..store.engine import DB_ERRORS

__all__ = ["DB_ERRORS"]
