"""Path rules every command follows: what it writes never overlaps what it reads, and a folder
it replaces is swapped in whole, only once the new content is complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable


def overlaps(first: str, second: str) -> bool:
    """Whether two paths are the same folder, or one lies inside the other (links resolved)."""
    a, b = os.path.realpath(first), os.path.realpath(second)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def replace_folder(target: str, write: Callable[[str], None]) -> None:
    """Fill a new folder with ``write(folder)`` beside ``target``, then put it in ``target``'s place;
    a failure (or a kill) before the swap leaves ``target`` as it was."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(target))}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if os.path.exists(target):
        previous = staging + ".old"
        os.replace(target, previous)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
