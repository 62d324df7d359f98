"""A restricted unpickler: pickle bytes -> plain data, CPU tensors and inert stubs, nothing else.

One pickle stream (``persistent_load`` supplied by the caller, who knows where the storages' bytes are)
-> the object it describes, where tensors are strided CPU views of :class:`_Storage` buffers, containers
are dicts, lists, sets and tuples, and every global not in :data:`_ALLOWED` (``model.SSD300``,
``torch.nn.modules.conv.Conv2d``, ``posix.system`` ...) is an inert :class:`_Stub` subclass. Nothing named
by the pickle is imported or called: every opcode that calls something (REDUCE, NEWOBJ, OBJ, INST,
BUILD, APPENDS, SETITEMS ...) only reaches our own functions, and a "call" of a stub class just records
its arguments. What calls and BUILDs copy out of shared (memoised) containers is charged against a
budget the size of the stream, so a small pickle cannot make a large copy.
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, Callable, Mapping

import torch
from torch import Tensor


class _Stub:
    """Inert stand-in for a class named by a pickle.

    Subclasses are made per ``(module, name)`` by :meth:`RestrictedUnpickler.find_class`. An instance
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
    """True for an instance of a stub class made by the restricted unpickler."""
    return isinstance(obj, _Stub)


def stub_name(obj: Any) -> str | None:
    """``"module.Name"`` of the class a stub instance stands for, else ``None``."""
    return type(obj)._stub_qualname() if isinstance(obj, _Stub) else None


def is_stub_class(x: Any) -> bool:
    """True for a stub class itself (what the unpickler made of a global it does not allow)."""
    return isinstance(x, type) and issubclass(x, _Stub)


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


class StorageType:
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
_STORAGE_TYPES = {name: StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()}

_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
        "bool", "complex64", "complex128",
    )
}  # fmt: skip


class Storage:
    """A storage read from the file: a 1-D CPU tensor ``base`` and the element offset of this view."""

    __slots__ = ("base", "offset", "numel")

    def __init__(self, base: Tensor, offset: int, numel: int) -> None:
        self.base, self.offset, self.numel = base, offset, numel

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype


def is_int(x: Any) -> bool:
    """A plain ``int`` (not a bool, not an int subclass a pickle could smuggle in)."""
    return type(x) is int


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Tensor:
    """A strided CPU view of ``storage``, bounds-checked against it (no memory outside it is reachable)."""
    if not isinstance(storage, Storage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if type(size) not in (tuple, list) or type(stride) not in (tuple, list):
        raise pickle.UnpicklingError("tensor size and stride must be tuples")
    size, stride = tuple(size), tuple(stride)
    if not (is_int(storage_offset) and storage_offset >= 0):
        raise pickle.UnpicklingError(f"bad tensor storage offset {storage_offset!r}")
    if len(size) != len(stride) or not all(is_int(v) and v >= 0 for v in size + stride):
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


_TENSOR_REBUILDERS = frozenset({_rebuild_tensor, _rebuild_tensor_v2, _rebuild_parameter})


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Tensor:
    """Tensor subclasses: rebuild the plain tensor with one of our tensor rebuilders, drop type and state."""
    if not (_hashable(func) and func in _TENSOR_REBUILDERS) or type(args) is not tuple:
        raise pickle.UnpicklingError("tensor subclass rebuilt with a function that is not allowed")
    return func(*args)


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
    if len(args) == 1 and type(args[0]) in (list, tuple) and all(is_int(v) for v in args[0]):
        return tuple(args[0])
    raise pickle.UnpicklingError("torch.Size with arguments that are not integers")


def _torch_device(*args: Any) -> str:
    """A pickled ``torch.device`` becomes its text (we never put anything on a device from a file)."""
    if args and all(type(a) in (str, int) for a in args):
        return ":".join(str(a) for a in args)
    raise pickle.UnpicklingError("torch.device with unexpected arguments")


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0 and 1): only for stub classes."""
    if is_stub_class(cls):
        return _new_stub(cls, () if state is None else (state,))
    raise pickle.UnpicklingError("copyreg._reconstructor for a class that is not a stub")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> an object of ours. Everything not listed becomes a stub class."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _plain(collections.OrderedDict),
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
    for mod in ("copyreg", "copy_reg"):
        allowed[(mod, "_reconstructor")] = _copyreg_reconstructor
    for mod in ("builtins", "__builtin__"):
        for kind in (dict, set, frozenset, list, tuple):
            allowed[(mod, kind.__name__)] = _plain(kind)
    for mod in ("torch", "torch.cuda", "torch.storage"):
        for name, storage_type in _STORAGE_TYPES.items():
            allowed[(mod, name)] = storage_type
    for name, dtype in _DTYPES.items():
        allowed[("torch", name)] = dtype
    return allowed


_ALLOWED = _allowed_globals()
_SAFE_FUNCTIONS = frozenset(
    v for v in _ALLOWED.values() if callable(v) and not isinstance(v, (torch.dtype, StorageType))
)
_SIZED = (str, bytes, bytearray, list, tuple, dict, set, frozenset, collections.OrderedDict)


def _call(func: Any, args: Any, kwargs: Any = None) -> Any:
    """The only place where unpickling "calls" something: our own functions, or a stub's record."""
    if type(args) is not tuple:
        raise pickle.UnpicklingError("call arguments are not a tuple")
    if kwargs is not None and type(kwargs) is not dict:
        raise pickle.UnpicklingError("call keyword arguments are not a dict")
    if is_stub_class(func):
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


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so every opcode is ours
    """Rebuilds tensors and plain containers; every other global is an inert :class:`_Stub` subclass.

    Args:
        file: the stream, positioned at the pickle.
        copy_budget: how many container elements (and characters) calls and BUILDs may copy in all,
            normally the stream's length in bytes: every element of a plain pickle is written at least
            once, while a memoised container passed again and again to ``list(...)`` would not be.
        persistent_load: given by the caller (it knows where the storages' bytes are); ``None`` refuses
            persistent ids.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(
        self, file: Any, copy_budget: int, persistent_load: Callable[[Any], Any] | None = None
    ) -> None:
        super().__init__(file, encoding="ASCII")
        self._stub_classes: dict[tuple[str, str], type] = {}
        self._persistent_load = persistent_load
        self._copy_budget = copy_budget

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

    def _charge(self, values: Any) -> None:
        """Spend the copy budget on the sizes of ``values`` (a call's arguments, a BUILD's state parts)."""
        if type(values) is tuple:
            self._copy_budget -= sum(len(v) for v in values if type(v) in _SIZED)
        if self._copy_budget < 0:
            raise pickle.UnpicklingError("the pickle copies more data than the file holds")

    def _charged_call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        self._charge(args)
        self._charge((kwargs,))
        return _call(func, args, kwargs)

    # --- every opcode that calls something goes through _charged_call or a type-checked container ---

    def _instantiate(self, klass: Any, args: list) -> None:  # OBJ, INST
        self.append(self._charged_call(klass, tuple(args)))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._charged_call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._charged_call(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._charged_call(cls, args, kwargs))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        self._charge(state if type(state) is tuple else (state,))
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


def plain_unpickle(f: Any, copy_budget: int) -> Any:
    """One pickle from ``f`` with the restricted unpickler and no persistent ids (header pickles)."""
    return RestrictedUnpickler(f, copy_budget).load()
