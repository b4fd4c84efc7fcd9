"""Exceptions that carry a message meant for the user.

The command line prints a :class:`UserError` as one line on stderr and exits non-zero, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (a name, a path, a file, an option): say what and why."""
