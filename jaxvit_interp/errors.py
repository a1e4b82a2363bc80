"""The project's one error for bad input, and how an environment failure is told to a user.

Everything a caller or the environment can get wrong (a file, a folder, an option, an array, a
checkpoint, a full disk) raises :class:`InputError` or one of its subclasses, with a message that
names the file, key or value at fault. The ``jaxvit-interp`` command prints those as one line and
exits with status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

__all__ = ["InputError", "environment_error_message"]


class InputError(ValueError):
    """Bad input: the caller's or the environment's fault, never a bug.

    A subclass of ``ValueError`` so that callers who catch ``ValueError`` keep working.
    The message is one line, optionally followed by indented detail lines.
    """


# OSErrors that say something about the machine or the paths given, not about the code: the
# command reports them as one line. (ENOENT and friends name a path the user gave.)
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.ENAMETOOLONG,
        errno.EMFILE,
        errno.ENFILE,
        errno.EIO,
        errno.ELOOP,
        errno.EPIPE,
    }
)

_HINTS = {
    errno.ENOSPC: "free some space and rerun the same command: finished parts are kept",
    errno.EDQUOT: "the disk quota is used up; free some space and rerun the same command",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
}


def environment_error_message(err: OSError) -> str | None:
    """One line for an ``OSError`` caused by the machine or a path, or None for any other."""
    if err.errno not in ENVIRONMENT_ERRNOS:
        return None
    what = err.strerror or type(err).__name__
    where = f": {err.filename}" if err.filename else ""
    if err.filename2:
        where += f" -> {err.filename2}"
    hint = _HINTS.get(err.errno)
    return f"{what}{where}" + (f" ({hint})" if hint else "")
