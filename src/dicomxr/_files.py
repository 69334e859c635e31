"""Files written like any tool writes them: atomically, with the user's umask permissions.

``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries on purpose (they are private
scratch files); renamed into place they would leave every output readable by its owner only.
:func:`atomic_path` keeps the temporary-name-then-``os.replace`` pattern and gives the file the
mode ``open(path, "w")`` would have given it (``0o666 & ~umask``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "current_umask", "replace_dir", "umask_mode"]


def current_umask() -> int:
    """Return the process umask without changing it where the OS can tell (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # elsewhere the only way to read it is to set it; set it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(*, directory: bool = False) -> int:
    """Return the mode a new file (``0o666``) or folder (``0o777``) gets under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``, renamed into place with umask permissions.

    On an error the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        The final file name. Its folder must exist.
    suffix
        Appended to the temporary name (writers that pick a format from the name need it,
        e.g. ``".nii.gz"``).

    Examples
    --------
    >>> from dicomxr._files import atomic_path
    >>> with atomic_path("notes.txt") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("complete or absent")
    """
    final = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(tmp: Path, target: Path, *, old_name: str) -> None:
    """Move the finished directory ``tmp`` to ``target``, replacing what is there.

    An existing ``target`` is first renamed to ``old_name`` (beside it) and removed only after
    ``tmp`` took its place, so a reader sees the old directory or the new one, never neither
    for longer than two renames.
    """
    if target.exists():
        old = target.with_name(old_name)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
