"""SQLAlchemy models and queries: the only package that writes SQL."""
