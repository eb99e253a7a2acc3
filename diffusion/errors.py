"""User-facing errors: each is one line naming the file, key or value and what is expected."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, flags); printed as one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A bad config file, key, value or override."""


class DataError(UserError):
    """A missing, empty or unreadable dataset."""


class CheckpointError(UserError):
    """A missing, truncated, unsafe or inconsistent checkpoint."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's ``main``; a :class:`UserError` becomes ``error: <message>`` and exit code 2."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
