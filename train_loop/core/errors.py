"""Errors a user can fix, printed as one line (never a traceback), and how a run ends when it
is stopped on purpose."""

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; resume to continue
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, no new checkpoint


class UserError(Exception):
    """A problem with the user's flags, files or data.

    The message names the bad flag or file and says what to do; the entry points print it as
    ``error: <message>`` and exit with status 2.
    """


class StoppedBeforeTraining(BaseException):
    """A stop signal arrived while the run was still loading or preparing (nothing to save)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def storage_error(err: OSError) -> UserError | None:
    """An OSError a user fixes on their side (a full disk, no permission, a read-only file system)
    as one line naming the path; None for anything else (a bug: let it show)."""
    import errno

    fixes = {errno.ENOSPC: "free some space or choose another folder",
             errno.EDQUOT: "free some space or choose another folder",
             errno.EACCES: "choose a folder this user may write to, or fix its permissions",
             errno.EPERM: "choose a folder this user may write to, or fix its permissions",
             errno.EROFS: "the file system is read-only: choose another folder"}
    if err.errno not in fixes:
        return None
    where = err.filename or "a file"
    return UserError(f"{where}: {err.strerror or err}; {fixes[err.errno]}")
