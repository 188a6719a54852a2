"""Errors a user can fix: printed as one line, never as a traceback."""


class UserError(Exception):
    """A problem with the user's flags, files or data.

    The message names the bad flag or file and says what to do; the entry points print it as
    ``error: <message>`` and exit with status 2.
    """
