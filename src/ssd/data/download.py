"""Downloading the official Pascal VOC archives: progress bar, resume, checksum.

The three archives the paper trains and tests on (the tutorial's list) are fetched from the
official server, or a mirror given as a base URL, into a folder and extracted there, giving
``<folder>/VOCdevkit/VOC2007`` and ``<folder>/VOCdevkit/VOC2012``.
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ssd.errors import SSDError

OFFICIAL_BASE = "http://host.robots.ox.ac.uk/pascal/VOC"


@dataclass(frozen=True)
class Archive:
    path: str  # below the base URL
    md5: str
    size_note: str


VOC_ARCHIVES = (
    Archive("voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64", "460 MB"),
    Archive("voc2007/VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f", "451 MB"),
    Archive("voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd", "2 GB"),
)


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    A finished file whose checksum matches is not fetched again; a checksum mismatch deletes the
    download and raises :class:`SSDError`.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # already complete
            response = None
        else:
            raise SSDError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise SSDError(f"download of {url} failed: {getattr(e, 'reason', e)} (no internet? use --mirror)") from e
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = None
            if progress:
                from ssd.progress import progress as progress_bar

                bar = progress_bar(total, dest.name, "B", initial=have, leave=False, unit_scale=True)
            with open(part, "ab" if resumed else "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
            if bar is not None:
                bar.close()
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink()
            raise SSDError(f"{dest.name}: checksum mismatch (md5 {got}, expected {md5}); the download was deleted")
    part.replace(dest)
    return dest


def extract(archive: Path, into: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``into``."""
    into = Path(into).resolve()
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                target = (into / member.name).resolve()
                if into not in target.parents and target != into:
                    raise SSDError(f"{archive}: refusing member outside the target folder: {member.name}")
                if member.issym() or member.islnk():
                    raise SSDError(f"{archive}: refusing link member {member.name}")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(into, **safe)
    except tarfile.TarError as e:
        raise SSDError(f"{archive}: not a readable tar archive: {e}") from e


def download_voc(folder: str | Path, base_url: str = OFFICIAL_BASE, archives=VOC_ARCHIVES, progress: bool = True) -> Path:
    """Download and extract the VOC archives into ``folder``; returns ``folder/VOCdevkit``."""
    folder = Path(folder)
    for archive in archives:
        url = f"{base_url.rstrip('/')}/{archive.path}"
        path = download(url, folder / Path(archive.path).name, archive.md5, progress)
        marker = folder / f".{path.name}.extracted"
        if not marker.exists():
            extract(path, folder)
            marker.write_text(archive.md5)
    return folder / "VOCdevkit"
