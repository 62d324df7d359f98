"""Path rules for every command: no output path may be one of the command's inputs, no file name read from a
dataset file leaves the folder it names a file in, and outputs that must never be seen half written
(checkpoints, models, indexes, drawings, detection files) are written whole or not at all (:func:`write_atomically`).

Each command lists the files it will write (with the option that names them) and the files it reads, and calls
:func:`refuse_to_overwrite_inputs` before any work, so a typo such as ``ssd export model.ckpt model.ckpt`` or
``ssd detect ... --out photos`` over the photos themselves is a one-line error, never a lost file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable

from ssd.errors import SSDError

__all__ = ["refuse_to_overwrite_inputs", "stays_inside", "write_atomically"]


def _file_identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(the real path, (device, inode) where the file exists): two names of one file share one or the other."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


def refuse_to_overwrite_inputs(writes: Iterable[tuple[str, Path]], reads: Iterable[Path]) -> None:
    """Every file a command will write (the option that names it, its path) checked against every file it reads,
    before any work: an :class:`SSDError` naming the option where an output is an input under any name (the same
    path, a symbolic or a hard link), so that no command destroys what it reads."""
    paths: dict[str, Path] = {}
    inodes: dict[tuple[int, int], Path] = {}
    for read in reads:
        real, inode = _file_identity(Path(read))
        paths[real] = Path(read)
        if inode is not None:
            inodes[inode] = Path(read)
    for option, write in writes:
        real, inode = _file_identity(Path(write))
        hit = paths.get(real) or (inodes.get(inode) if inode is not None else None)
        if hit is not None:
            raise SSDError(f"{option} {write}: would overwrite {hit}, an input of this command; choose another path")


def stays_inside(name: str) -> bool:
    """True when ``name``, a relative file name read from a dataset file (a COCO ``file_name``, a VOC
    ``<filename>`` or image id), stays inside the folder it is joined to: not empty, not absolute (no drive), no
    ``..`` part and no NUL. A dataset file can then only name images in its own image folder."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not name or "\0" in name:
        return False
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        return False
    return ".." not in posix.parts and ".." not in windows.parts


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` sets it to read it,
    which another thread creating a file at that moment would feel)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, sync: bool = True) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then (fsynced, with ``sync``) renamed over it: a crash
    at any point leaves the previous file or the new one, never a torn file. The file gets the permissions a plain
    ``open`` would give it (those of the file it replaces, or 0o666 less the umask; a temporary file alone
    would be 0o600). OSError propagates; the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777  # permission bits only: never a replaced file's setuid or setgid
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if os.name == "posix":  # Windows has only a read-only bit, which would stop the clean-up below
                os.fchmod(f.fileno(), mode)
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every file system lets a folder be fsynced
