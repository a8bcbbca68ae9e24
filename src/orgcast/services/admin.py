"""The admin bearer token: from settings, or generated once and kept under ``data_dir``."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from ..settings import Settings

TOKEN_FILE = "admin_token"  # noqa: S105 (a file name, not a secret)


def admin_token_path(settings: Settings) -> Path:
    return (settings.data_dir / TOKEN_FILE).resolve()


def resolve_admin_token(settings: Settings) -> tuple[str, Path | None]:
    """The admin token and, when it lives in a file, that file (created mode 0600 if missing)."""
    if settings.admin.token:
        return settings.admin.token, None
    path = admin_token_path(settings)
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, path
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # Created with mode 0600: the secret is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())
