"""Checkpoints that describe themselves, written atomically and read without unpickling code.

A checkpoint is a plain dict saved with :func:`torch.save`::

    {"format": "ssd-checkpoint", "format_version": 1, "library_version": "0.1.0",
     "config": ModelConfig.to_dict(),    # everything needed to rebuild the network
     "model": state_dict,                 # tensors only
     ...}                                 # training state (optimizer, step, RNG) where saved by `ssd train`

It is read back with ``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain
containers: a file crafted to run code on load is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import time
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch

from ssd.config import ModelConfig
from ssd.errors import CheckpointError
from ssd.paths import write_atomically

FORMAT = "ssd-checkpoint"
FORMAT_VERSION = 1

PAUSE_ENV = "SSD_FAULT_PAUSE_CHECKPOINT_WRITE"
"""Fault injection for tests: seconds to sleep after the temporary file is written, before rename; ``<path>.paused``
exists while it sleeps (a test's signal then lands in the pause, not in ``torch.save``)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``
    (:func:`ssd.paths.write_atomically`): a crash at any point leaves either the previous file or the new one."""

    def write(f) -> None:
        recorder = _WriteErrors(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError as err:  # torch's zip writer reports a failed write as "unexpected pos ..."
            if recorder.error is not None:
                raise recorder.error from err
            raise
        pause = os.environ.get(PAUSE_ENV)
        if pause:
            marker = Path(f"{path}.paused")
            marker.touch()
            try:
                time.sleep(float(pause))
            finally:
                marker.unlink(missing_ok=True)

    return write_atomically(path, write)


class _WriteErrors:
    """A binary file that remembers the first OSError its writes raised (a full disk, a file-size limit), which
    ``torch.save`` would otherwise turn into a RuntimeError that names no cause."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def make_checkpoint(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (an :class:`~ssd.model.SSD`) plus plain ``extra`` entries."""
    from ssd.version import __version__

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "config": model.config.to_dict(),
        "model": state,
    }
    clash = set(ckpt) & set(extra)
    if clash:
        raise ValueError(f"extra entries clash with reserved keys: {sorted(clash)}")
    for key, value in extra.items():
        try:
            problem = not_plain_data(value, key)
        except RecursionError as err:
            raise CheckpointError(f"cannot save {key}: nested too deeply to check") from err
        if problem:
            raise CheckpointError(f"cannot save {problem}: loading (weights_only) would refuse the file; save plain "
                                  "tensors, numbers, strings and lists, tuples and dicts of them")  # fmt: skip
    ckpt.update(extra)
    return ckpt


_PLAIN_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size,
                 torch.layout)  # fmt: skip
_PLAIN_CONTAINERS = (list, tuple, set, frozenset, dict, OrderedDict, Counter)


def not_plain_data(obj: Any, where: str) -> str | None:
    """Where ``obj`` holds something that ``torch.load(weights_only=True)`` refuses to rebuild (a numpy value, a
    path, any other class), as ``"where[key][i]: a TypeName"``; None when it is all plain data. Exact types:
    a subclass (a named tuple, a tensor subclass) is refused as weights_only refuses it."""
    if type(obj) in (torch.Tensor, torch.nn.Parameter) or type(obj) in _PLAIN_LEAVES:
        return None
    if type(obj) not in _PLAIN_CONTAINERS:
        return f"{where}: a {type(obj).__module__}.{type(obj).__qualname__}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        problem = (not_plain_data(key, f"{where} (a key)") if isinstance(obj, dict) else None) or not_plain_data(
            value, f"{where}[{key!r}]"
        )
        if problem:
            return problem
    return None


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model``'s checkpoint (configuration + weights + ``extra``) atomically to ``path``."""
    return atomic_torch_save(make_checkpoint(model, **extra), path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint dict safely (``weights_only=True``, tensors on the CPU).

    Raises :class:`CheckpointError` saying what is wrong: missing, truncated, not ours, or a
    pickle that asks for code (refused, never run).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    check_declared_sizes(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects, not plain tensors and "
            f"containers ({first[:200]}). If it is the tutorial's checkpoint, convert it with "
            f"`ssd convert tutorial`."
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an ssd checkpoint (no '{FORMAT}' marker). Tutorial or torchvision weights "
            f"can be imported with `ssd convert`."
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this library reads "
            f"({FORMAT_VERSION}); upgrade the ssd package"
        )
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    model = ckpt["model"]
    if not isinstance(model, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise CheckpointError(f"{path}: the 'model' entry is not a mapping of names to tensors")
    return dict(ckpt)


MAX_ZIP_ENTRIES = 100_000
"""Zip entries read at most: the directory of a file with more costs memory before anything can be checked."""


def _zip_entry_count(path: Path) -> int | None:
    """The entry count a zip file's end-of-central-directory record declares (from its last 64 KiB), without
    reading the directory; None when there is no such record (not a zip: the caller says so)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(0, end - 65_557))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 12 > len(tail):
        return None
    count = int.from_bytes(tail[at + 10 : at + 12], "little")
    return MAX_ZIP_ENTRIES + 1 if count == 0xFFFF else count  # 0xFFFF: zip64, over 65 534 entries


def check_declared_sizes(path: Path) -> None:
    """Refuse, before reading, a file whose contents could unpack to more memory than the file's own size: ssd
    writes torch's zip format, uncompressed, so the sizes its entries declare add up to at most the file's size.
    A legacy (non-zip) torch file allocates each storage at the size its pickle declares, so it is refused."""
    size = path.stat().st_size
    entries = _zip_entry_count(path)
    if entries is not None and entries > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"{path}: refused to load: {entries} entries (an ssd checkpoint has a few hundred; "
                              f"at most {MAX_ZIP_ENTRIES} are read)")  # fmt: skip
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {e}") from e
        raise CheckpointError(
            f"{path}: refused to load: not a checkpoint in torch's zip format (a legacy torch file declares its own "
            f"storage sizes). If it is the tutorial's checkpoint, convert it with `ssd convert tutorial`."
        ) from e
    if declared > 2 * size + 4096:
        raise CheckpointError(
            f"{path}: refused to load: its entries declare {declared} bytes in a file of {size} (compressed or "
            f"crafted); ssd checkpoints are stored uncompressed"
        )


def config_from_checkpoint(ckpt: Mapping[str, Any]) -> ModelConfig:
    """The checkpoint's :class:`ModelConfig`, validated (sane bounds) and checked against the weights the file
    holds before anything is allocated: a configuration can only describe the network the file carries."""
    try:
        config = ModelConfig.from_dict(ckpt["config"])
    except Exception as e:
        raise CheckpointError(f"checkpoint configuration is invalid: {e}") from e
    from ssd.model import SSD

    with torch.device("meta"):  # shapes only: no memory is spent on a network the file does not hold
        skeleton = SSD(config)
    check_state_fits(skeleton, ckpt["model"])
    return config


def model_from_checkpoint(ckpt: Mapping[str, Any]):
    """Rebuild the network from a checkpoint dict's configuration and load its weights."""
    from ssd.model import SSD

    model = SSD(config_from_checkpoint(ckpt))
    load_state(model, ckpt["model"])
    return model


def check_state_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` in one line unless ``state`` has exactly ``model``'s names and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensors of other shapes (e.g. {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError("weights do not fit this model: " + "; ".join(parts))


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Strict ``load_state_dict`` that explains mismatches in one line."""
    check_state_fits(model, state)
    model.load_state_dict(state)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an :class:`~ssd.model.SSD` from a checkpoint file, in eval mode, on ``device``."""
    model = model_from_checkpoint(load_checkpoint(path))
    return model.to(device).eval()
