"""Checks of output paths shared by the commands: fail on a bad --out before any work, create folders after."""

from __future__ import annotations

import os
from pathlib import Path

from ssd.errors import SSDError


def writable_dir(path: str | os.PathLike, option: str) -> Path:
    """Check that ``path`` is, or can be created as, a writable folder (created later, once all options pass)."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise SSDError(f"{option} {path}: exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise SSDError(f"{option} {path}: the folder is not writable")
        return p
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SSDError(f"{option} {path}: cannot create the folder ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SSDError(f"{option} {path}: cannot create the folder ({ancestor} is not writable)")
    return p


def create_dirs(folders: list[tuple[Path, str]]) -> None:
    for folder, option in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SSDError(f"{option} {folder}: cannot create the folder ({e.strerror or e})") from None


def writable_file(path: str | os.PathLike, option: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise SSDError(f"{option} {path}: is a folder; give a file name")
    writable_dir(p.parent, option)
    if p.exists() and not os.access(p, os.W_OK):
        raise SSDError(f"{option} {path}: the file is not writable")
    return p
