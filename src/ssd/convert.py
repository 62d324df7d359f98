"""Importing weights people already have: the tutorial's checkpoint and torchvision's SSD300.

Tutorial (``ssd convert tutorial SRC OUT``)
    The tutorial's ``checkpoint_ssd300.pth.tar`` pickles the whole ``model.SSD300`` object (and its SGD
    optimizer), so ``torch.load`` would need the tutorial's ``model.py`` and would run whatever the pickle
    says. :func:`restricted_load` reads it with an unpickler of our own instead: it rebuilds tensors (on
    the CPU, whatever device the storages were tagged with) and plain containers, and turns every other
    global the pickle names (``model.SSD300``, ``torch.nn.modules.conv.Conv2d``, ``torch.optim.sgd.SGD``,
    ``torch.nn.backends.thnn.*``, ``posix.system`` ...) into an inert stub class. Nothing named by the
    pickle is imported or called: every opcode that calls something (REDUCE, NEWOBJ, OBJ, INST, BUILD,
    APPENDS, SETITEMS ...) only reaches our own functions, and a "call" of a stub class just records its
    arguments. Both serialization formats load: the zip archive (``<name>/data.pkl`` + ``<name>/data/<key>``)
    and the legacy stream (magic number, protocol, sys info, pickle, storage keys, raw storages).
    :func:`read_tutorial_checkpoint` then walks the stubbed module tree (``_parameters``, ``_buffers``,
    ``_modules``) into the tutorial's state dict and :func:`convert_tutorial` writes our checkpoint.

torchvision (``ssd convert torchvision OUT``)
    :func:`torchvision_state_to_ours` maps ``torchvision.models.detection.ssd300_vgg16``'s state dict onto
    the ``ssd300-torchvision`` preset (same network, same priors, same decoding);
    :func:`convert_torchvision` does it for the COCO weights (downloaded) or a local file.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from ssd.config import EXTRA, VOC_CLASSES, ModelConfig, get_preset
from ssd.errors import SSDError

__all__ = [
    "restricted_load",
    "read_tutorial_checkpoint",
    "convert_tutorial",
    "coco_class_names",
    "torchvision_state_to_ours",
    "torchvision_coco_state",
    "convert_torchvision",
]

# =================================================================================================
# A restricted unpickler for PyTorch files
# =================================================================================================


class _Stub:
    """Inert stand-in for a class named by a pickle.

    Subclasses are made per ``(module, name)`` by :meth:`_RestrictedUnpickler.find_class`. An instance
    only holds data: the arguments it was "constructed" with (``_stub_args``, never used to call
    anything), its pickled attributes in ``__dict__`` and any other pickled state in ``_stub_state``.
    """

    __slots__ = ("_stub_args", "_stub_state", "__dict__", "__weakref__")
    _stub_module: str = ""
    _stub_name: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - never reached
        raise pickle.UnpicklingError(f"stub {self._stub_qualname()} must not be constructed directly")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError(f"refusing to call an object of stub class {self._stub_qualname()}")

    @classmethod
    def _stub_qualname(cls) -> str:
        return f"{cls._stub_module}.{cls._stub_name}"

    def __repr__(self) -> str:
        return f"<stub {self._stub_qualname()}>"


def is_stub(obj: Any) -> bool:
    """True for an instance of a stub class made by :func:`restricted_load`."""
    return isinstance(obj, _Stub)


def stub_name(obj: Any) -> str | None:
    """``"module.Name"`` of the class a stub instance stands for, else ``None``."""
    return type(obj)._stub_qualname() if isinstance(obj, _Stub) else None


def _new_stub(cls: type, args: tuple, kwargs: Mapping | None = None) -> _Stub:
    obj = object.__new__(cls)
    obj._stub_args = (tuple(args), dict(kwargs or {}))
    obj._stub_state = None
    return obj


def _set_stub_state(obj: _Stub, state: Any) -> None:
    """BUILD on a stub: attribute dicts go to ``__dict__`` (string keys only), anything else is kept."""
    slotstate = None
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state, slotstate = state
    for part in (state, slotstate):
        if part is None:
            continue
        if type(part) in (dict, collections.OrderedDict) and all(type(k) is str for k in part):
            obj.__dict__.update(part)
        else:
            obj._stub_state = part


class _StorageType:
    """What ``torch.FloatStorage`` and friends resolve to: a dtype tag, nothing callable."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
_STORAGE_TYPES = {name: _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()}

_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
        "bool", "complex64", "complex128",
    )
}  # fmt: skip


class _Storage:
    """A storage read from the file: a 1-D CPU tensor ``base`` and the element offset of this view."""

    __slots__ = ("base", "offset", "numel")

    def __init__(self, base: Tensor, offset: int, numel: int) -> None:
        self.base, self.offset, self.numel = base, offset, numel

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype


def _is_int(x: Any) -> bool:
    return type(x) is int


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Tensor:
    """A strided CPU view of ``storage``, bounds-checked against it (no memory outside it is reachable)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if type(size) not in (tuple, list) or type(stride) not in (tuple, list):
        raise pickle.UnpicklingError("tensor size and stride must be tuples")
    size, stride = tuple(size), tuple(stride)
    if not (_is_int(storage_offset) and storage_offset >= 0):
        raise pickle.UnpicklingError(f"bad tensor storage offset {storage_offset!r}")
    if len(size) != len(stride) or not all(_is_int(v) and v >= 0 for v in size + stride):
        raise pickle.UnpicklingError(f"bad tensor size {size!r} / stride {stride!r}")
    if all(s > 0 for s in size):
        last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= storage.numel:
            raise pickle.UnpicklingError(
                f"tensor of size {size} and stride {stride} at offset {storage_offset} overruns its "
                f"storage of {storage.numel} elements"
            )
    return storage.base.as_strided(size, stride, storage.offset + storage_offset)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):  # fmt: skip
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None, state: Any = None):
    """A pickled ``nn.Parameter`` becomes its plain tensor (hooks and extra state are dropped)."""
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError(f"parameter rebuilt from {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Tensor:
    """Tensor subclasses: rebuild the plain tensor with an allowed function, drop type and state."""
    if func not in _SAFE_FUNCTIONS or type(args) is not tuple:
        raise pickle.UnpicklingError("tensor subclass rebuilt with a function that is not allowed")
    out = func(*args)
    if not isinstance(out, Tensor):
        raise pickle.UnpicklingError("tensor subclass did not rebuild into a tensor")
    return out


def _plain(kind: type) -> Callable[..., Any]:
    """``dict(...)``, ``set(...)`` etc. taking nothing or one plain container (no user iterables)."""

    def make(*args: Any) -> Any:
        if not args:
            return kind()
        if len(args) == 1 and type(args[0]) in (list, tuple, dict, set, frozenset, collections.OrderedDict):
            return kind(args[0])
        raise pickle.UnpicklingError(f"{kind.__name__}() with arguments {[type(a).__name__ for a in args]}")

    make.__name__ = f"safe_{kind.__name__}"
    return make


def _defaultdict(*args: Any) -> dict:
    """``collections.defaultdict(factory)`` becomes a plain dict: the factory is never kept or called."""
    if len(args) > 1 and type(args[1]) in (dict, collections.OrderedDict):
        return dict(args[1])
    return {}


def _codecs_encode(obj: Any, encoding: str = "utf-8", *rest: Any) -> bytes:
    """How protocol-2 pickles store ``bytes`` under Python 3: ``_codecs.encode(str, 'latin1')``."""
    if type(obj) is str and encoding in ("latin1", "latin-1") and not rest:
        return obj.encode("latin-1")
    raise pickle.UnpicklingError("_codecs.encode used for something other than bytes")


def _torch_size(*args: Any) -> tuple:
    if not args:
        return ()
    if len(args) == 1 and type(args[0]) in (list, tuple) and all(_is_int(v) for v in args[0]):
        return tuple(args[0])
    raise pickle.UnpicklingError("torch.Size with arguments that are not integers")


def _torch_device(*args: Any) -> str:
    """A pickled ``torch.device`` becomes its text (we never put anything on a device from a file)."""
    if args and all(type(a) in (str, int) for a in args):
        return ":".join(str(a) for a in args)
    raise pickle.UnpicklingError("torch.device with unexpected arguments")


_SAFE_ORDERED_DICT = _plain(collections.OrderedDict)

# (module, name) -> an object of ours. Everything not listed becomes a stub class.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _SAFE_ORDERED_DICT,
    ("collections", "defaultdict"): _defaultdict,
    ("_codecs", "encode"): _codecs_encode,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
}
for _mod in ("builtins", "__builtin__"):
    for _kind in (dict, set, frozenset, list, tuple):
        _ALLOWED[(_mod, _kind.__name__)] = _plain(_kind)
for _mod in ("torch", "torch.cuda", "torch.storage"):
    for _name, _st in _STORAGE_TYPES.items():
        _ALLOWED[(_mod, _name)] = _st
for _name, _dt in _DTYPES.items():
    _ALLOWED[("torch", _name)] = _dt

_SAFE_FUNCTIONS = frozenset(v for v in _ALLOWED.values() if callable(v) and not isinstance(v, torch.dtype))


def _call(func: Any, args: Any, kwargs: Any = None) -> Any:
    """The only place where unpickling "calls" something: our own functions, or a stub's record."""
    if type(args) is not tuple:
        raise pickle.UnpicklingError("call arguments are not a tuple")
    if kwargs is not None and type(kwargs) is not dict:
        raise pickle.UnpicklingError("call keyword arguments are not a dict")
    if isinstance(func, type) and issubclass(func, _Stub):
        return _new_stub(func, args, kwargs)
    if _hashable(func) and func in _SAFE_FUNCTIONS:
        return func(*args, **(kwargs or {}))
    raise pickle.UnpicklingError(f"refusing to call {type(func).__name__} object {func!r:.80}")


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0 and 1): only for stub classes."""
    if isinstance(cls, type) and issubclass(cls, _Stub):
        return _new_stub(cls, () if state is None else (state,))
    raise pickle.UnpicklingError("copyreg._reconstructor for a class that is not a stub")


_ALLOWED[("copyreg", "_reconstructor")] = _copyreg_reconstructor
_ALLOWED[("copy_reg", "_reconstructor")] = _copyreg_reconstructor
_SAFE_FUNCTIONS = _SAFE_FUNCTIONS | {_copyreg_reconstructor}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so every opcode is ours
    """Rebuilds tensors and plain containers; every other global is an inert :class:`_Stub` subclass.

    ``persistent_load`` is given by the caller (it knows where the storages' bytes are).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file, encoding="ASCII")
        self._stub_classes: dict[tuple[str, str], type] = {}
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        key = (str(module), str(name))
        if key in _ALLOWED:
            return _ALLOWED[key]
        cls = self._stub_classes.get(key)
        if cls is None:
            cls = type(
                key[1] if key[1].isidentifier() else "Stub", (_Stub,),
                {"__slots__": (), "_stub_module": key[0], "_stub_name": key[1], "__module__": __name__},
            )  # fmt: skip
            self._stub_classes[key] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        return self._persistent_load(pid)

    # --- every opcode that calls something goes through _call or a type-checked container ------

    def _instantiate(self, klass: Any, args: list) -> None:  # OBJ, INST
        self.append(_call(klass, tuple(args)))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = _call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_call(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_call(cls, args, kwargs))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _Stub):
            _set_stub_state(inst, state)
        elif type(inst) is collections.OrderedDict and type(state) is dict:
            # A state dict's `_metadata` attribute: kept as plain data.
            if all(type(k) is str for k in state):
                inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"refusing to set the state of a {type(inst).__name__}")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._list_target().append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._list_target().extend(items)

    def _list_target(self) -> list:
        target = self.stack[-1]
        if type(target) is not list:
            raise pickle.UnpicklingError(f"refusing to append to a {type(target).__name__}")
        return target

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._dict_target()[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict_target()
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _dict_target(self) -> dict:
        target = self.stack[-1]
        if type(target) not in (dict, collections.OrderedDict):
            raise pickle.UnpicklingError(f"refusing to set items of a {type(target).__name__}")
        return target

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise pickle.UnpicklingError(f"refusing to add items to a {type(target).__name__}")
        target.update(items)

    def _refuse_extension(self) -> None:
        raise pickle.UnpicklingError("pickle extension codes (copyreg registry) are not supported")

    for _op, _fn in (
        (pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.BUILD, load_build), (pickle.APPEND, load_append), (pickle.APPENDS, load_appends),
        (pickle.SETITEM, load_setitem), (pickle.SETITEMS, load_setitems), (pickle.ADDITEMS, load_additems),
        (pickle.EXT1, _refuse_extension), (pickle.EXT2, _refuse_extension), (pickle.EXT4, _refuse_extension),
    ):  # fmt: skip
        dispatch[_op[0]] = _fn
    del _op, _fn


def _plain_unpickle(f: Any) -> Any:
    """One pickle from ``f`` with the restricted unpickler and no persistent ids (header pickles)."""
    return _RestrictedUnpickler(f).load()


def _ascii(x: Any) -> Any:
    return x.decode("ascii") if isinstance(x, bytes) else x


def _storage_type_of(pid: tuple, index: int) -> _StorageType:
    st = pid[index]
    if not isinstance(st, _StorageType):
        raise pickle.UnpicklingError(f"storage of unknown type {st!r:.80}")
    return st


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _load_zip(path: Path, zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise SSDError(f"{path}: a zip file but not a PyTorch checkpoint (no single <name>/data.pkl)")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise SSDError(f"{path}: unknown byte order {byteorder!r}")
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> Any:
        if type(pid) is not tuple or len(pid) < 5 or _ascii(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        st = _storage_type_of(pid, 1)
        key, numel = str(_ascii(pid[2])), pid[4]
        if not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage size {numel!r}")
        if key not in storages:
            record = f"{prefix}data/{key}"
            if record not in names:
                raise pickle.UnpicklingError(f"storage {key!r} missing from the archive")
            es = _element_size(st.dtype)
            if zf.getinfo(record).file_size < numel * es:
                raise pickle.UnpicklingError(f"storage {key!r} holds fewer than {numel} elements")
            raw = bytearray(zf.read(record))[: numel * es]
            base = _from_bytes(raw, st.dtype, big_endian=byteorder == "big")
            storages[key] = _Storage(base, 0, numel)
        s = storages[key]
        if s.dtype != st.dtype:
            raise pickle.UnpicklingError(f"storage {key!r} used with two dtypes")
        return s

    with zf.open(pkls[0]) as f:
        return _RestrictedUnpickler(io.BytesIO(f.read()), persistent_load).load()


def _from_bytes(raw: bytearray, dtype: torch.dtype, big_endian: bool = False) -> Tensor:
    if len(raw) == 0:
        return torch.empty(0, dtype=dtype)
    t = torch.frombuffer(raw, dtype=torch.uint8)
    es = _element_size(dtype)
    if big_endian and es > 1:
        t = t.view(-1, es).flip(1).reshape(-1)
    return t.view(dtype)  # shares memory with `raw`, which it keeps alive


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_legacy(path: Path, data: bytes) -> Any:
    f = io.BytesIO(data)
    magic = _plain_unpickle(f)
    if magic != _LEGACY_MAGIC:
        raise SSDError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
    protocol = _plain_unpickle(f)
    if protocol != _LEGACY_PROTOCOL:
        raise SSDError(f"{path}: unknown legacy serialization protocol {protocol!r}")
    sys_info = _plain_unpickle(f)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise SSDError(f"{path}: written on a big-endian machine, which is not supported")
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}
    budget = len(data)

    def persistent_load(pid: Any) -> Any:
        if type(pid) is not tuple or not pid:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        kind = _ascii(pid[0])
        if kind == "module":  # ("module", class, source file, source): the class, here a stub
            if len(pid) >= 2 and isinstance(pid[1], type) and issubclass(pid[1], _Stub):
                return pid[1]
            raise pickle.UnpicklingError("module persistent id without a stub class")
        if kind != "storage" or len(pid) != 6:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        st = _storage_type_of(pid, 1)
        key, numel, view = str(_ascii(pid[2])), pid[4], pid[5]
        if not _is_int(numel) or numel < 0 or numel * _element_size(st.dtype) > budget:
            raise pickle.UnpicklingError(f"bad storage size {numel!r}")
        if key not in roots:
            roots[key] = _Storage(torch.zeros(numel, dtype=st.dtype), 0, numel)
        root = roots[key]
        if root.dtype != st.dtype:
            raise pickle.UnpicklingError(f"storage {key!r} used with two dtypes")
        if view is None:
            return root
        if type(view) is not tuple or len(view) != 3:
            raise pickle.UnpicklingError("bad storage view")
        view_key, offset, size = str(_ascii(view[0])), view[1], view[2]
        if not (_is_int(offset) and _is_int(size) and offset >= 0 and size >= 0 and offset + size <= numel):
            raise pickle.UnpicklingError("storage view outside its storage")
        if view_key not in views:
            views[view_key] = _Storage(root.base, offset, size)
        return views[view_key]

    result = _RestrictedUnpickler(f, persistent_load).load()
    keys = _plain_unpickle(f)
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
    return result


def restricted_load(path: str | os.PathLike) -> Any:
    """Read a file written by ``torch.save`` (zip or legacy format) without running anything in it.

    Tensors come back as plain CPU tensors (parameters included), containers as dicts, lists, sets and
    tuples, and every other object as an inert stub (see :func:`is_stub`, :func:`stub_name`) whose
    attributes hold its pickled state. Raises :class:`SSDError` when the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise SSDError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # as torch.load decides
        if is_zip:
            with zipfile.ZipFile(path) as zf:
                return _load_zip(path, zf)
        data = path.read_bytes()
        if len(data) >= 262 and data[257:262] == b"ustar":
            raise SSDError(f"{path}: a tar-format checkpoint (PyTorch before 0.4) is not supported")
        return _load_legacy(path, data)
    except SSDError:
        raise
    except Exception as e:  # the unpickler runs only our code: any failure means an unreadable file
        raise SSDError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None


# =================================================================================================
# The tutorial's checkpoint
# =================================================================================================


def _module_state(module: _Stub, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    """``nn.Module.state_dict`` of a stubbed module: own parameters, persistent buffers, then children."""
    if id(module) in seen:
        raise SSDError(f"module tree has a cycle at {prefix or 'the root'}")
    seen.add(id(module))
    attrs = module.__dict__
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        entries = attrs.get(kind) or {}
        if not isinstance(entries, Mapping):
            raise SSDError(f"{prefix}{kind} is a {type(entries).__name__}, not a dict")
        for name, t in entries.items():
            if t is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(t, Tensor):
                raise SSDError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + str(name)] = t
    children = attrs.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise SSDError(f"{prefix}_modules is a {type(children).__name__}, not a dict")
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, _Stub):
            raise SSDError(f"{prefix}{name} is a {type(child).__name__}, not a module")
        _module_state(child, f"{prefix}{name}.", out, seen)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _tutorial_parts(obj: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, info) from a loaded tutorial file: a checkpoint dict, a model, or a state dict."""
    info: dict[str, Any] = {}
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        if isinstance(obj.get("epoch"), int):
            info["epoch"] = obj["epoch"]
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj:
                obj = obj[key]
                break
        else:
            raise SSDError(
                f"no 'model' entry: the file holds a dict with keys {sorted(map(str, obj))[:8]}"
            )
    if _is_tensor_dict(obj):
        state = {str(k): v for k, v in obj.items()}
    elif isinstance(obj, _Stub):
        if not ({"_parameters", "_modules"} & set(obj.__dict__)):
            raise SSDError(f"the model entry is a {stub_name(obj)} object, neither a model nor a state dict")
        info["class"] = stub_name(obj)
        state = {}
        _module_state(obj, "", state, set())
        holder = obj
        wrapped = obj.__dict__.get("_modules") or {}
        if "priors_cxcy" not in obj.__dict__ and isinstance(wrapped, Mapping) and set(wrapped) == {"module"}:
            holder = wrapped["module"] if isinstance(wrapped["module"], _Stub) else obj  # nn.DataParallel
        priors = holder.__dict__.get("priors_cxcy")
        if priors is not None:
            if not isinstance(priors, Tensor):
                raise SSDError(f"the model's priors_cxcy is a {type(priors).__name__}, not a tensor")
            info["priors_cxcy"] = priors
        if isinstance(holder.__dict__.get("n_classes"), int):
            info["n_classes"] = holder.__dict__["n_classes"]
    else:
        raise SSDError(f"the model entry is a {type(obj).__name__}, neither a model nor a state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if not state:
        raise SSDError("the model holds no tensors")
    return state, info


def _check_tutorial_priors(priors: Tensor) -> None:
    from ssd.priors import priors_for

    ours = priors_for(get_preset("ssd300"))
    if tuple(priors.shape) != tuple(ours.shape):
        raise SSDError(
            f"the checkpoint's priors_cxcy have shape {tuple(priors.shape)}, the ssd300 preset's "
            f"{tuple(ours.shape)}: this model was built with other priors and cannot be converted"
        )
    diff = (priors.double() - ours.double()).abs().max().item()
    if not diff <= 1e-6:
        raise SSDError(
            f"the checkpoint's priors_cxcy differ from the ssd300 preset's by up to {diff:.3g} "
            f"(tolerance 1e-6): this model was built with other priors and its boxes would decode "
            f"wrongly; refusing to convert"
        )


def _read_tutorial(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    obj = restricted_load(path)
    try:
        state, info = _tutorial_parts(obj)
    except SSDError as e:
        raise SSDError(f"{path}: not the tutorial's checkpoint or state dict: {e}") from None
    if "rescale_factors" not in state or not any(k.startswith("base.") for k in state):
        raise SSDError(
            f"{path}: not the tutorial's SSD300 (no rescale_factors / base.* tensors; found e.g. "
            f"{list(state)[:3]})"
        )
    if "priors_cxcy" in info:
        try:
            _check_tutorial_priors(info["priors_cxcy"])
        except SSDError as e:
            raise SSDError(f"{path}: {e}") from None
    return state, info


def read_tutorial_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tutorial's state dict (its own names: ``base.conv1_1.weight``, ``rescale_factors``, ...) from
    its ``checkpoint_ssd300.pth.tar`` (whole pickled model) or a state-dict file, either format.

    Read with :func:`restricted_load`: the tutorial's code is not needed and nothing in the file runs.
    When the pickled model carries ``priors_cxcy`` they must equal the ``ssd300`` preset's to 1e-6.
    Raises :class:`SSDError` on anything unreadable or not the tutorial's.
    """
    return _read_tutorial(path)[0]


def convert_tutorial(
    src: str | os.PathLike, out: str | os.PathLike, class_names: Sequence[str] = VOC_CLASSES
) -> Path:
    """Convert the tutorial's checkpoint or state dict ``src`` into our checkpoint ``out``
    (``ssd300`` preset with ``class_names``, the foreground classes in the tutorial's label order).
    """
    from ssd.checkpoint import load_state, save_checkpoint
    from ssd.model import build_model
    from ssd.weights import tutorial_to_state

    state, info = _read_tutorial(src)
    head = state.get("pred_convs.cl_conv4_3.weight")
    if head is None or head.ndim != 4 or head.shape[0] % 4:
        raise SSDError(f"{src}: no usable pred_convs.cl_conv4_3.weight (the class head)")
    n_classes = head.shape[0] // 4
    class_names = tuple(class_names)
    if n_classes != len(class_names) + 1:
        raise SSDError(
            f"{src}: the model's heads predict {n_classes} classes (background included) but "
            f"{len(class_names)} class names were given ({len(class_names) + 1} with background)"
        )
    if "n_classes" in info and info["n_classes"] != n_classes:
        raise SSDError(f"{src}: n_classes is {info['n_classes']} but the heads predict {n_classes}")
    model = build_model("ssd300", class_names)
    try:
        mapped = tutorial_to_state(state)
        load_state(model, mapped)
    except SSDError as e:
        raise SSDError(f"{src}: {e}") from None
    source = {"converter": "tutorial", "file": Path(src).name, "epoch": info.get("epoch")}
    return save_checkpoint(model, out, source=source)


# =================================================================================================
# torchvision's ssd300_vgg16
# =================================================================================================

# torchvision `backbone.features` indices of conv1_1 .. conv4_3, then `backbone.extra.0` indices of
# conv5_1 .. conv5_3; conv6 and conv7 are `backbone.extra.0.7.1` and `.7.3`.
_TV_FEATURE_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
_TV_CONV5 = (1, 3, 5)
_TV_BASE_NAMES = tuple(
    f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)
)
_TV_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
"""``ssd300_vgg16``'s DefaultBoxGenerator aspect ratios: per position 1, extra, then r, 1/r for each r."""


def coco_class_names() -> tuple[str, ...]:
    """The 90 foreground names of torchvision's COCO detectors, so that label ``i`` is COCO category id ``i``.

    torchvision's ``categories`` list (read from ``SSD300_VGG16_Weights.COCO_V1.meta``, no download) has 91
    entries: ``__background__`` at 0, then names at their COCO category ids, with ``"N/A"`` at the 10 ids
    COCO leaves unused (12, 26, 29, 30, 45, 66, 68, 69, 71, 83). The network predicts all 91 classes, so
    the placeholders are kept as classes, renamed ``"N/A_<id>"`` to make the names unique; keeping them
    keeps every label equal to its COCO category id (``person`` is 1, ``toothbrush`` 90). They are never
    trained on, so they score low; drop them from results by name if needed.
    """
    from torchvision.models.detection import SSD300_VGG16_Weights

    categories = list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])
    if categories[0] != "__background__":
        raise SSDError(f"unexpected torchvision COCO categories: {categories[:3]}")
    return tuple(f"{name}_{i}" if name == "N/A" else name for i, name in enumerate(categories) if i > 0)


def _tv_order(k: int) -> list[Any]:
    order: list[Any] = [1.0, EXTRA]
    for r in _TV_ASPECT_RATIOS[k]:
        order += [float(r), 1.0 / r]
    return order


def _head_permutation(config: ModelConfig, k: int) -> list[int]:
    """For map ``k``, the torchvision prior index of each of our per-position priors."""
    tv = _tv_order(k)
    ours = config.priors.aspect_ratios[k]
    if len(ours) != len(tv):
        raise SSDError(
            f"map {k}: the configuration has {len(ours)} priors per position, torchvision's SSD300 {len(tv)}"
        )
    perm = []
    for r in ours:
        match = [
            i for i, t in enumerate(tv)
            if (r == EXTRA and t == EXTRA)
            or (r != EXTRA and t != EXTRA and math.isclose(float(r), t, rel_tol=2e-3))
        ]  # fmt: skip
        if len(match) != 1 or match[0] in perm:
            raise SSDError(f"map {k}: aspect ratios {list(ours)} do not match torchvision's {tv}")
        perm.append(match[0])
    return perm


def torchvision_state_to_ours(tv_state: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """``ssd300_vgg16(...).state_dict()`` -> our state dict for ``config`` (normally the
    ``ssd300-torchvision`` preset with as many classes as the checkpoint's heads).

    A renaming (``backbone.features.*`` -> ``base.conv1_1`` .. ``conv4_3``, ``backbone.extra.0.*`` ->
    ``conv5_*``, ``conv6``, ``conv7``, ``backbone.scale_weight`` -> ``l2norm.weight``,
    ``backbone.extra.1..4`` -> ``extras.conv8..11``, ``head.regression_head`` / ``classification_head``
    -> ``loc_heads`` / ``cls_heads``), plus a permutation of the heads' per-position prior channels when
    ``config`` orders the priors differently from torchvision's (1, extra, 2, 1/2, 3, 1/3); for the
    ``ssd300-torchvision`` preset the order is the same and the heads are copied as they are.
    """
    try:
        out: dict[str, Tensor] = {}
        names = iter(_TV_BASE_NAMES)
        for idx in _TV_FEATURE_CONVS:
            name = next(names)
            for p in ("weight", "bias"):
                out[f"base.{name}.{p}"] = tv_state[f"backbone.features.{idx}.{p}"]
        for idx in _TV_CONV5:
            name = next(names)
            for p in ("weight", "bias"):
                out[f"base.{name}.{p}"] = tv_state[f"backbone.extra.0.{idx}.{p}"]
        for name, idx in (("conv6", 1), ("conv7", 3)):
            for p in ("weight", "bias"):
                out[f"base.{name}.{p}"] = tv_state[f"backbone.extra.0.7.{idx}.{p}"]
        out["l2norm.weight"] = tv_state["backbone.scale_weight"]
        for block in range(1, 5):
            for sub, conv in ((0, 1), (2, 2)):
                for p in ("weight", "bias"):
                    tv_name = f"backbone.extra.{block}.{sub}.{p}"
                    out[f"extras.conv{block + 7}_{conv}.{p}"] = tv_state[tv_name]
        n_maps = len(_TV_ASPECT_RATIOS)
        if len(config.priors.aspect_ratios) != n_maps:
            raise SSDError(
                f"the configuration has {len(config.priors.aspect_ratios)} maps, torchvision's {n_maps}"
            )
        c = config.num_classes
        for k in range(n_maps):
            perm = _head_permutation(config, k)
            a = len(perm)
            heads = (("regression_head", "loc_heads", 4), ("classification_head", "cls_heads", c))
            for tv_head, ours, width in heads:
                for p in ("weight", "bias"):
                    t = tv_state[f"head.{tv_head}.module_list.{k}.{p}"]
                    if t.shape[0] != a * width:
                        raise SSDError(
                            f"head.{tv_head}.module_list.{k}.{p} has {t.shape[0]} outputs, expected "
                            f"{a} priors x {width}"
                            + (f" (the model has {c} classes with background)" if width == c else "")
                        )
                    t = t.reshape(a, width, *t.shape[1:])[perm].reshape(a * width, *t.shape[1:])
                    out[f"{ours}.{k}.{p}"] = t.contiguous()
    except KeyError as e:
        raise SSDError(f"not a torchvision ssd300_vgg16 state dict: missing {e.args[0]!r}") from None
    extra = sorted(set(tv_state) - _tv_used_keys(len(_TV_ASPECT_RATIOS)))
    if extra:
        raise SSDError(f"torchvision state dict has unexpected entries, e.g. {extra[:3]}")
    return out


def _tv_used_keys(n_maps: int) -> set[str]:
    keys = {"backbone.scale_weight"}
    for p in ("weight", "bias"):
        keys |= {f"backbone.features.{i}.{p}" for i in _TV_FEATURE_CONVS}
        keys |= {f"backbone.extra.0.{i}.{p}" for i in _TV_CONV5}
        keys |= {f"backbone.extra.0.7.{i}.{p}" for i in (1, 3)}
        keys |= {f"backbone.extra.{b}.{s}.{p}" for b in range(1, 5) for s in (0, 2)}
        for head in ("regression_head", "classification_head"):
            keys |= {f"head.{head}.module_list.{k}.{p}" for k in range(n_maps)}
    return keys


def torchvision_coco_state() -> dict[str, Tensor]:
    """torchvision's ``SSD300_VGG16_Weights.COCO_V1`` state dict (downloaded once, then cached by torch.hub).

    Raises :class:`SSDError` when it cannot be downloaded (e.g. offline), naming the URL to fetch by hand.
    """
    from torchvision.models.detection import SSD300_VGG16_Weights

    weights = SSD300_VGG16_Weights.COCO_V1
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    except Exception as e:  # network errors come in many types
        raise SSDError(
            f"could not download torchvision's SSD300 COCO weights ({type(e).__name__}: {e}). Without "
            f"internet, download {weights.url} elsewhere and pass the file instead of 'coco'"
        ) from None


def _read_tv_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise SSDError(f"torchvision weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SSDError(f"{path}: cannot read as a state dict ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not _is_tensor_dict(state):
        raise SSDError(f"{path}: not a state dict of tensors")
    return dict(state)


def convert_torchvision(
    out: str | os.PathLike,
    weights: str | os.PathLike = "coco",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write our checkpoint (``ssd300-torchvision`` preset) of torchvision's ``ssd300_vgg16`` weights.

    Args:
        out: the checkpoint to write.
        weights: ``"coco"`` for ``SSD300_VGG16_Weights.COCO_V1`` (downloaded; :class:`SSDError` when
            offline) or a path to an ``ssd300_vgg16`` state dict.
        class_names: the foreground classes in label order; by default :func:`coco_class_names` when the
            heads predict 91 classes (required otherwise).
    """
    from ssd.checkpoint import load_state, save_checkpoint
    from ssd.model import build_model

    if str(weights) == "coco":
        state, origin = torchvision_coco_state(), "SSD300_VGG16_Weights.COCO_V1"
    else:
        state, origin = _read_tv_file(Path(weights)), Path(weights).name
    head = state.get("head.classification_head.module_list.0.weight")
    if head is None:
        raise SSDError(f"{origin}: not a torchvision ssd300_vgg16 state dict (no classification head)")
    n_classes = head.shape[0] // 4  # 4 priors per position on the first map
    if class_names is None:
        if n_classes != 91:
            raise SSDError(
                f"{origin}: the heads predict {n_classes} classes (background included); give their "
                f"{n_classes - 1} foreground class names"
            )
        class_names = coco_class_names()
    class_names = tuple(class_names)
    if n_classes != len(class_names) + 1:
        raise SSDError(
            f"{origin}: the heads predict {n_classes} classes (background included) but "
            f"{len(class_names)} class names were given"
        )
    model = build_model("ssd300-torchvision", class_names)
    load_state(model, torchvision_state_to_ours(state, model.config))
    return save_checkpoint(model, out, source={"converter": "torchvision", "weights": origin})
