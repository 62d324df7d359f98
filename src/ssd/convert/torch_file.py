"""Files written by ``torch.save`` -> the pickled object, read with the restricted unpickler.

``path`` -> zip archive (``<name>/data.pkl`` + one ``<name>/data/<key>`` record of raw bytes per
storage, optional ``<name>/byteorder``) or legacy stream (magic number, protocol, sys info, the pickle,
the list of storage keys, then per storage an int64 element count and its raw bytes) -> the object the
pickle describes (see :mod:`ssd.convert.unpickle`): tensors are strided CPU views of 1-D buffers of the
storages' dtypes, whatever device the storages were tagged with. Before any storage is allocated its
bytes are charged to a budget of the file's size, so a small file cannot declare large storages.
Not ``torch.load(weights_only=True)`` + stubs: it refuses legacy model pickles ('module' ids), allocates declared storage unchecked.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssd.convert.unpickle import RestrictedUnpickler, Storage, StorageType, is_int, is_stub_class, plain_unpickle
from ssd.errors import SSDError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _ByteBudget:
    """Bytes a file may make us hold in all: its own size (it stores every byte it declares)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit

    def spend(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise pickle.UnpicklingError(
                f"the file declares more storage than it holds: {what} ({nbytes} bytes) takes the total "
                f"past the file's {self.limit} bytes"
            )
        self.left -= nbytes


def _ascii(x: Any) -> Any:
    return x.decode("ascii") if isinstance(x, bytes) else x


def _storage_type_of(pid: tuple, index: int) -> StorageType:
    st = pid[index]
    if not isinstance(st, StorageType):
        raise pickle.UnpicklingError(f"storage of unknown type {st!r:.80}")
    return st


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _storage_size(pid: tuple, index: int) -> int:
    numel = pid[index]
    if not is_int(numel) or numel < 0:
        raise pickle.UnpicklingError(f"bad storage size {numel!r}")
    return numel


def _from_bytes(raw: bytearray, dtype: torch.dtype, big_endian: bool = False) -> Tensor:
    if len(raw) == 0:
        return torch.empty(0, dtype=dtype)
    t = torch.frombuffer(raw, dtype=torch.uint8)
    es = _element_size(dtype)
    if big_endian and es > 1:
        t = t.view(-1, es).flip(1).reshape(-1)
    return t.view(dtype)  # shares memory with `raw`, which it keeps alive


def _zip_byteorder(path: Path, zf: zipfile.ZipFile, names: set[str], prefix: str) -> str:
    if prefix + "byteorder" not in names:
        return "little"
    byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        raise SSDError(f"{path}: unknown byte order {byteorder!r}")
    return byteorder


def _load_zip(path: Path, zf: zipfile.ZipFile, budget: _ByteBudget) -> Any:
    names = set(zf.namelist())
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise SSDError(f"{path}: a zip file but not a PyTorch checkpoint (no single <name>/data.pkl)")
    prefix = pkls[0][: -len("data.pkl")]
    big_endian = _zip_byteorder(path, zf, names, prefix) == "big"
    storages: dict[str, Storage] = {}

    def persistent_load(pid: Any) -> Any:
        if type(pid) is not tuple or len(pid) < 5 or _ascii(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        st = _storage_type_of(pid, 1)
        key, numel = str(_ascii(pid[2])), _storage_size(pid, 4)
        if key not in storages:
            record = f"{prefix}data/{key}"
            if record not in names:
                raise pickle.UnpicklingError(f"storage {key!r} missing from the archive")
            nbytes, record_size = numel * _element_size(st.dtype), zf.getinfo(record).file_size
            budget.spend(max(nbytes, record_size), f"storage {key!r}")
            if record_size < nbytes:
                raise pickle.UnpicklingError(f"storage {key!r} holds fewer than {numel} elements")
            raw = bytearray(zf.read(record))[:nbytes]
            storages[key] = Storage(_from_bytes(raw, st.dtype, big_endian), 0, numel)
        s = storages[key]
        if s.dtype != st.dtype:
            raise pickle.UnpicklingError(f"storage {key!r} used with two dtypes")
        return s

    budget.spend(zf.getinfo(pkls[0]).file_size, pkls[0])
    data = zf.read(pkls[0])
    return RestrictedUnpickler(io.BytesIO(data), len(data), persistent_load).load()


def _legacy_header(path: Path, f: io.BytesIO, copy_budget: int) -> None:
    """Reads and checks the magic number, protocol and sys info that precede a legacy file's pickle."""
    if plain_unpickle(f, copy_budget) != _LEGACY_MAGIC:
        raise SSDError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
    protocol = plain_unpickle(f, copy_budget)
    if protocol != _LEGACY_PROTOCOL:
        raise SSDError(f"{path}: unknown legacy serialization protocol {protocol!r}")
    sys_info = plain_unpickle(f, copy_budget)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise SSDError(f"{path}: written on a big-endian machine, which is not supported")


def _legacy_persistent_load(roots: dict[str, Storage], budget: _ByteBudget) -> Any:
    """``persistent_load`` of a legacy pickle: storages (zero-filled until their bytes are read) and views."""
    views: dict[str, Storage] = {}

    def persistent_load(pid: Any) -> Any:
        if type(pid) is not tuple or not pid:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        kind = _ascii(pid[0])
        if kind == "module":  # ("module", class, source file, source): the class, here a stub
            if len(pid) >= 2 and is_stub_class(pid[1]):
                return pid[1]
            raise pickle.UnpicklingError("module persistent id without a stub class")
        if kind != "storage" or len(pid) != 6:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        st = _storage_type_of(pid, 1)
        key, numel, view = str(_ascii(pid[2])), _storage_size(pid, 4), pid[5]
        if key not in roots:
            budget.spend(numel * _element_size(st.dtype), f"storage {key!r}")
            roots[key] = Storage(torch.zeros(numel, dtype=st.dtype), 0, numel)
        root = roots[key]
        if root.dtype != st.dtype:
            raise pickle.UnpicklingError(f"storage {key!r} used with two dtypes")
        if view is None:
            return root
        if type(view) is not tuple or len(view) != 3:
            raise pickle.UnpicklingError("bad storage view")
        view_key, offset, size = str(_ascii(view[0])), view[1], view[2]
        if not (is_int(offset) and is_int(size) and offset >= 0 and size >= 0 and offset + size <= numel):
            raise pickle.UnpicklingError("storage view outside its storage")
        if view_key not in views:
            views[view_key] = Storage(root.base, offset, size)
        return views[view_key]

    return persistent_load


def _read_legacy_storages(path: Path, f: io.BytesIO, roots: dict[str, Storage], copy_budget: int) -> None:
    """The storages' bytes that follow a legacy pickle, copied into the buffers it declared."""
    keys = plain_unpickle(f, copy_budget)
    if type(keys) is not list:
        raise SSDError(f"{path}: corrupt legacy checkpoint (no storage key list)")
    for key in keys:
        key = str(_ascii(key))
        if key not in roots:
            raise SSDError(f"{path}: corrupt legacy checkpoint (data for unknown storage {key!r})")
        storage = roots[key]
        head = f.read(8)
        if len(head) != 8:
            raise SSDError(f"{path}: truncated legacy checkpoint (storage {key!r} missing)")
        (count,) = struct.unpack("<q", head)
        if count != storage.numel:
            raise SSDError(
                f"{path}: corrupt legacy checkpoint (storage {key!r}: {count} elements, "
                f"expected {storage.numel})"
            )
        nbytes = count * _element_size(storage.dtype)
        raw = bytearray(f.read(nbytes))
        if len(raw) != nbytes:
            raise SSDError(f"{path}: truncated legacy checkpoint (storage {key!r} cut short)")
        storage.base.copy_(_from_bytes(raw, storage.dtype))


def _load_legacy(path: Path, data: bytes) -> Any:
    f = io.BytesIO(data)
    _legacy_header(path, f, len(data))
    roots: dict[str, Storage] = {}
    persistent_load = _legacy_persistent_load(roots, _ByteBudget(len(data)))
    result = RestrictedUnpickler(f, len(data), persistent_load).load()
    _read_legacy_storages(path, f, roots, len(data))
    return result


def restricted_load(path: str | os.PathLike) -> Any:
    """Read a file written by ``torch.save`` (zip or legacy format) without running anything in it.

    Tensors come back as plain CPU tensors (parameters included), containers as dicts, lists, sets and
    tuples, and every other object as an inert stub (see :func:`~ssd.convert.unpickle.is_stub`,
    :func:`~ssd.convert.unpickle.stub_name`) whose attributes hold its pickled state. Raises
    :class:`SSDError` when the file cannot be read, or declares more storage than its own size.
    """
    path = Path(path)
    if not path.is_file():
        raise SSDError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # as torch.load decides
        if is_zip:
            with zipfile.ZipFile(path) as zf:
                return _load_zip(path, zf, _ByteBudget(path.stat().st_size))
        data = path.read_bytes()
        if len(data) >= 262 and data[257:262] == b"ustar":
            raise SSDError(f"{path}: a tar-format checkpoint (PyTorch before 0.4) is not supported")
        return _load_legacy(path, data)
    except SSDError:
        raise
    except Exception as err:  # the unpickler runs only our code: any failure means an unreadable file
        raise SSDError(f"{path}: cannot read as a PyTorch checkpoint ({type(err).__name__}: {err})") from err
