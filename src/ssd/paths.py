"""One rule for every command: no output path may be one of the command's inputs.

Each command lists the files it will write (with the option that names them) and the files it reads, and calls
:func:`refuse_to_overwrite_inputs` before any work, so a typo such as ``ssd export model.ckpt model.ckpt`` or
``ssd detect ... --out photos`` over the photos themselves is a one-line error, never a lost file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ssd.errors import SSDError

__all__ = ["refuse_to_overwrite_inputs"]


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
