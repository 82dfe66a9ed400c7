"""The one exception type for problems a user can cause and fix."""


class ModelSphereError(Exception):
    """A problem with the user's input, config or files.

    The message names the file, column, row or config field involved and says what
    to do. Entry points print it without a traceback and exit with status 2.
    """
