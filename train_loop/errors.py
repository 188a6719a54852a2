"""Errors a user can fix: printed as one line, never as a traceback."""


class UserError(Exception):
    """A problem with the user's flags, files or data.

    The message names the bad flag or file and says what to do; the entry points print it as
    ``error: <message>`` and exit with status 2.
    """


def run_tool(body) -> int:
    """A command-line tool's exit status: ``body()``'s (None is 0), 2 with one ``error:`` line
    for a UserError, 130 on Ctrl-C. Shared by every ``python -m train_loop.<tool>``."""
    import sys

    from .logger import make_line_buffered, quiet_library_output

    make_line_buffered()
    quiet_library_output()
    try:
        return body() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
