"""Output and exit codes shared by every ``orgcast`` command (``__main__`` and ``cli``).

A command prints for people by default and one JSON document with ``--json``; a failure is one
``orgcast: <message>`` line on stderr (or ``{"error": {...}}`` on stdout with ``--json``) and exit
code 1. Kept apart from ``__main__``: under ``python -m orgcast`` that module is loaded twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import OrgcastError

EXIT_OK, EXIT_FAILURE = 0, 1


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with --json, else ``text`` for people."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text:
        print(text)


def note(text: str) -> None:
    """A line for people on stderr, whatever the output format."""
    print(f"orgcast: {text}", file=sys.stderr)


def fail(args: argparse.Namespace | None, exc: OrgcastError | str) -> int:
    """Report a failure in the output format asked for; returns the exit code."""
    if isinstance(exc, OrgcastError) and args is not None and getattr(args, "json", False):
        print(json.dumps({"error": exc.to_dict()}))
    else:
        note(exc.message if isinstance(exc, OrgcastError) else exc)
    return EXIT_FAILURE
