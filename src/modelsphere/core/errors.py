"""The exception types for problems a user can cause and fix."""

from __future__ import annotations

from typing import List, Optional

# The exit status of a run stopped by a ModelSphereError (bad input or config).
USAGE_ERROR_EXIT_CODE = 2


class ModelSphereError(Exception):
    """A problem with the user's input, config or files.

    The message names the file, column, row or config field involved and says what
    to do. Entry points print it without a traceback and exit with status 2.
    """


class PeersLost(ModelSphereError):
    """A distributed run lost its other processes. The process group's threads
    may still wait on them, and ending the interpreter normally would abort in
    their destructors: entry points log the message and end the process at once.
    """


class RowError(ModelSphereError):
    """Bad values in particular rows of the rows given to one call.

    `positions` are 0-based within those rows and `column` names the input column
    at fault (None: the row as a whole). The caller turns them into what its user
    sees: data row numbers for a file, `records[i].<column>` for the API.
    """

    def __init__(
        self, message: str, positions: List[int], column: Optional[str] = None
    ):
        super().__init__(message)
        self.positions, self.column = positions, column
