"""User-facing errors: one actionable line, exit code 2, no traceback (unless ``--debug``)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input named precisely (file, row, key, what was expected). The CLI prints it on one line, exits 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
