"""Errors a user can fix: the command prints their one-line message (no traceback) and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable path: the message names what is wrong, which key or path, and what to do."""
