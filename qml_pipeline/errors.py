"""The one base class of bad input: a file, row, setting or served value the user must fix.

Every subclass's message names the thing to fix (file, line or row or time, column, what was seen,
what is expected). The Dagster layer shows such an error as its message alone (`dg.Failure`), not as
a stack of framework frames; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, named in the message; nothing derived from it was written. `where` names what was being
    read when it was refused (e.g. 'klines BTCUSDT 1h [2024-02-01, 2024-03-01)'), when the reader knows."""

    where: str = ""
