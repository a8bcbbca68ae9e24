"""``orgcast tenants ...`` and ``orgcast token``: tenant administration from the shell."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register the tenant and token sub-commands (filled in by the CLI work)."""
