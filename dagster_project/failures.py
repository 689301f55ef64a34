"""How the library's input errors reach the Dagster UI: as their message, not as a stack of frames."""

import contextlib
from collections.abc import Iterator

import dagster as dg

from qml_pipeline.errors import InputError


@contextlib.contextmanager
def input_errors_as_failures(context: str = "") -> Iterator[None]:
    """Turn an InputError (a bad file, row, setting or served value; its message names what to fix)
    into `dg.Failure` carrying that message, prefixed by where it was refused (the error's `where`, else
    `context`: e.g. the table, symbol and range).
    Any other exception is a bug and keeps its traceback."""
    try:
        yield
    except InputError as exc:
        prefix = f"{exc.where}: " if exc.where else context
        raise dg.Failure(description=f"{prefix}{exc}", allow_retries=False) from None
