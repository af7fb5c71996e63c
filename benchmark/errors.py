"""Errors a user can fix, and how the command line shows them.

Every user error (a bad value, a missing or corrupt file, an unwritable folder, an unknown name,
a device that is not there, a results folder in use) is a ``UserError``: the command line prints
it as one line ``error: ...`` and exits with status 2, without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import re

USER_ERROR_STATUS = 2
"""Exit status of a command stopped by a user error (argparse's own)."""
FAILED_RUNS_STATUS = 1
"""Exit status of a sweep, reproduce or report in which a selected or test run failed."""


class UserError(Exception):
    """A problem the user can fix; its message is one line saying what and how."""


class DeviceError(UserError, ValueError):
    """A device was asked for that this machine does not have."""


def one_line(message: object) -> str:
    """``message`` on one line: newlines and the indentation after them become one space."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()
