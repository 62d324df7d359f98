"""`ssd convert`: the tutorial's pickled checkpoint (read without its code, nothing in it run) and
torchvision's ssd300_vgg16 (same outputs and detections as torchvision's own model)."""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import pickletools
import sys
import types
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import GOLDENS, need, tutorial_state_spec
from ssd import VOC_CLASSES, SSDError, build_model, get_preset, load_model
from ssd.checkpoint import load_checkpoint
from ssd.cli import main
from ssd.convert import (
    coco_class_names,
    convert_torchvision,
    convert_tutorial,
    is_stub,
    read_tutorial_checkpoint,
    restricted_load,
    stub_name,
    torchvision_state_to_ours,
)
from ssd.convert.tutorial import _tutorial_parts
from ssd.priors import priors_for
from ssd.weights import tutorial_to_state

TREES = {fmt: GOLDENS / f"tutorial_tree_{fmt}.pth.tar" for fmt in ("zip", "legacy")}
PLAIN = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("__builtin__", "set"),
         ("__builtin__", "dict")}  # fmt: skip


def _save(obj, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def _pickle_globals(path: Path) -> set[tuple[str, str]]:
    """(module, name) of every GLOBAL in a torch file's main pickle, read with pickletools (nothing run)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
        streams = [io.BytesIO(data)]
    else:
        f = io.BytesIO(path.read_bytes())
        for _ in range(3):  # magic number, protocol, sys info
            list(pickletools.genops(f))
        streams = [f]
    found = set()
    for f in streams:
        for op, arg, _ in pickletools.genops(f):
            if op.name == "GLOBAL":
                found.add(tuple(arg.split(" ", 1)))
    return found


# --- the shrunk object trees in goldens/ ---------------------------------------------------------


class _Tripwire:
    """Stands in for everything a pickle names: touching it in any way is recorded."""

    def __init__(self, name: str, log: list) -> None:
        self._name, self._log = name, log

    def __call__(self, *args, **kwargs):
        self._log.append(f"called {self._name}")
        raise AssertionError(f"{self._name} was called")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._log.append(f"{self._name}.{attr}")
        raise AssertionError(f"{self._name}.{attr} was looked up")


class _TripwireModule(types.ModuleType):
    def __init__(self, name: str, log: list) -> None:
        super().__init__(name)
        self._log = log

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._log.append(f"imported {self.__name__}.{attr}")
        return _Tripwire(f"{self.__name__}.{attr}", self._log)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tutorial_tree_loads_without_running_anything(fmt, monkeypatch):
    path = need(TREES[fmt])
    named = _pickle_globals(path)
    assert ("model", "SSD300") in named and ("torch.nn.backends.thnn", "THNNFunctionBackend") in named
    # Everything the pickle names (but plain containers) becomes a tripwire: the tutorial's module and the
    # vanished thnn backend as fake modules, torch's own classes and rebuild functions patched in place.
    log: list[str] = []
    for module, name in sorted(named - PLAIN):
        if module in sys.modules and module not in ("model", "torch.nn.backends.thnn"):
            monkeypatch.setattr(sys.modules[module], name, _Tripwire(f"{module}.{name}", log))
    monkeypatch.setitem(sys.modules, "model", _TripwireModule("model", log))
    monkeypatch.setitem(sys.modules, "torch.nn.backends.thnn", _TripwireModule("torch.nn.backends.thnn", log))

    tree = restricted_load(path)
    assert log == []

    assert tree["epoch"] == 231
    model, optimizer = tree["model"], tree["optimizer"]
    assert stub_name(model) == "model.SSD300" and stub_name(optimizer) == "torch.optim.sgd.SGD"
    assert stub_name(model._backend) == "torch.nn.backends.thnn.THNNFunctionBackend"
    base = model._modules["base"]
    assert stub_name(base) == "model.VGGBase"
    assert stub_name(base._modules["conv1_1"]) == "torch.nn.modules.conv.Conv2d"
    with pytest.raises(pickle.UnpicklingError):
        model()  # a stub is never callable
    # The module tree walks into the tutorial's state-dict names, in its order, on the CPU.
    state, info = _tutorial_parts(tree)
    assert list(state) == [name for name, _ in tutorial_state_spec()]
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 and t.numel() == 2 for t in state.values())
    assert info["n_classes"] == 21 and info["priors_cxcy"].shape == (3, 4)
    # The optimizer's parameter list holds the same tensors' values; its defaultdict is a plain dict.
    assert type(optimizer.state) is dict and len(optimizer.param_groups[0]["params"]) == 71
    # Its priors were shrunk too, so converting it is refused with a message.
    with pytest.raises(SSDError, match="priors_cxcy"):
        read_tutorial_checkpoint(path)


def test_tutorial_trees_agree():
    a, b = (restricted_load(need(TREES[fmt])) for fmt in ("zip", "legacy"))
    (sa, ia), (sb, ib) = _tutorial_parts(a), _tutorial_parts(b)
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(ia["priors_cxcy"], ib["priors_cxcy"])
    # The shrunk priors are the tutorial's first three.
    torch.testing.assert_close(ia["priors_cxcy"], priors_for(get_preset("ssd300"))[:3], rtol=0, atol=1e-6)


def test_pytorch_04_style_names_load(tmp_path):
    # PyTorch 0.4 wrote GPU storages as torch.cuda.FloatStorage and parameters as
    # Parameter(tensor, requires_grad): the same tree with those names loads on the CPU.
    data = need(TREES["legacy"]).read_bytes()
    for old, new in (
        (b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n"),
        (b"ctorch._utils\n_rebuild_parameter\n", b"ctorch.nn.parameter\nParameter\n"),
    ):
        assert data.count(old) == 1
        data = data.replace(old, new)
    path = tmp_path / "old.pth.tar"
    path.write_bytes(data)
    assert ("torch.cuda", "FloatStorage") in _pickle_globals(path)
    state, _ = _tutorial_parts(restricted_load(path))
    expected, _ = _tutorial_parts(restricted_load(TREES["legacy"]))
    assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in state)
    assert all(t.device.type == "cpu" for t in state.values())


# --- malicious pickles -------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _crafted_pickle(marker: Path) -> bytes:
    """getattr(__import__('os'), 'system')('touch MARKER'), as a hand-written protocol-0 pickle."""
    return b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(Vtouch " + str(marker).encode() + b"\ntR."


def _as_zip(pkl: bytes, path: Path, records: dict[str, bytes] | None = None, deflate: bool = False) -> Path:
    """A zip checkpoint of ``pkl`` with storage ``records``, stored (as torch writes them) or deflated."""
    compression = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")
        for key, raw in (records or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def _as_legacy(pkl: bytes, path: Path) -> Path:
    header = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
    )
    path.write_bytes(header + pkl + pickle.dumps([], protocol=2))
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_malicious_reduce_is_not_run(fmt, tmp_path):
    marker = tmp_path / "pwned"
    # os.system via __reduce__, saved by torch.save itself.
    path = _save({"epoch": 1, "model": _Evil(marker)}, tmp_path / "evil.pth.tar", fmt)
    named = _pickle_globals(path)
    assert any(name == "system" for _, name in named)
    tree = restricted_load(path)
    assert is_stub(tree["model"]) and stub_name(tree["model"]).endswith(".system")
    with pytest.raises(SSDError, match="neither a model nor a state dict"):
        read_tutorial_checkpoint(path)
    with pytest.raises(SSDError):
        convert_tutorial(path, tmp_path / "out.ckpt")
    # A hand-made gadget chain: getattr(__import__('os'), 'system')(...): refused at the first call
    # of a stub's result.
    crafted = _crafted_pickle(marker)
    evil = (_as_zip if fmt == "zip" else _as_legacy)(crafted, tmp_path / f"crafted.{fmt}")
    with pytest.raises(SSDError, match="refusing to call"):
        restricted_load(evil)
    assert not marker.exists()
    assert not (tmp_path / "out.ckpt").exists()


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(SSDError, match="not found"):
        read_tutorial_checkpoint(tmp_path / "missing.pth.tar")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SSDError) as refused:
        read_tutorial_checkpoint(junk)
    assert refused.value.__cause__ is not None  # the reader's own error is kept as the cause
    # A truncated legacy file.
    good = _save({"a": torch.arange(10.0)}, tmp_path / "good.pt", "legacy")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:-8])
    with pytest.raises(SSDError, match="truncated"):
        restricted_load(cut)
    # A tensor pointing outside its storage (4 floats stored, 100 claimed).
    overrun = _storage_pickle({"0": 4}, size=(100,), legacy=False)
    with pytest.raises(SSDError, match="overruns its storage"):
        restricted_load(_as_zip(overrun, tmp_path / "overrun.pt", records={"0": bytes(16)}))


def test_cli_reports_an_unreadable_file_in_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["convert", "tutorial", str(junk), str(tmp_path / "out.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssd: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out.ckpt").exists()


class _StorageRef:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, size: tuple[int, ...]) -> None:
        self.storage, self.size = storage, size


def _storage_pickle(declared: dict[str, int], size: tuple[int, ...] = (1,), legacy: bool = False) -> bytes:
    """A pickle of ``{key: float tensor of size}``, the storage ``key`` declaring ``declared[key]`` elements."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
                return pid + (None,) if legacy else pid  # legacy ids carry a view
            return None

        def reducer_override(self, obj):
            if isinstance(obj, _TensorRef):
                args = (obj.storage, 0, obj.size, (1,) * len(obj.size), False, collections.OrderedDict())
                return (torch._utils._rebuild_tensor_v2, args)
            return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({key: _TensorRef(_StorageRef(key, n), size) for key, n in declared.items()})
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_declared_storage_is_bounded_by_the_file_size(fmt, tmp_path):
    def write(pkl: bytes, name: str, records: dict[str, bytes]) -> Path:
        """The zip holds ``records`` deflated (a few bytes each); the legacy file holds no storage bytes."""
        path = tmp_path / f"{name}.{fmt}"
        return _as_zip(pkl, path, records, deflate=True) if fmt == "zip" else _as_legacy(pkl, path)

    # One storage of 2**40 floats (4 TiB) declared by a file of a few hundred bytes: refused before any
    # allocation (torch.load would try to allocate it).
    huge = write(_storage_pickle({"0": 2**40}, legacy=fmt == "legacy"), "huge", {"0": b""})
    with pytest.raises(SSDError, match="declares more storage than it holds"):
        restricted_load(huge)
    # Many storages, each smaller than the file, that together exceed it.
    declared = {str(i): 256 for i in range(60)}  # 60 KiB in all
    many = write(_storage_pickle(declared, legacy=fmt == "legacy"), "many", {k: bytes(1024) for k in declared})
    assert many.stat().st_size < 60 * 1024
    with pytest.raises(SSDError, match="declares more storage than it holds"):
        restricted_load(many)


def test_zip_records_cannot_expand_past_the_file(tmp_path):
    # A deflated record of 8 MiB of zeros (a few KiB in the archive) declared as a storage of 2M floats.
    bomb = _as_zip(_storage_pickle({"0": 2 << 20}), tmp_path / "bomb.pt", {"0": bytes(8 << 20)}, deflate=True)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(SSDError, match="declares more storage than it holds"):
        restricted_load(bomb)
    # The same for data.pkl itself (padding after the pickle's STOP).
    pkl = pickle.dumps({"a": 1}, protocol=2) + bytes(8 << 20)
    big_pkl = _as_zip(pkl, tmp_path / "big_pkl.pt", deflate=True)
    with pytest.raises(SSDError, match="declares more storage than it holds"):
        restricted_load(big_pkl)
    # Deflated records within the file's size still load.
    small = _as_zip(_storage_pickle({"0": 4}), tmp_path / "small.pt", {"0": bytes(16)}, deflate=True)
    assert torch.equal(restricted_load(small)["0"], torch.zeros(1))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_repeated_copies_of_a_shared_container_are_bounded(fmt, tmp_path):
    # [None] * 20000 memoised, then list(<it>) 2000 times: 40M elements copied by a 34 kB pickle.
    n, copies = 20000, 2000
    pkl = b"\x80\x02]q\x00(" + b"N" * n + b"ec__builtin__\nlist\nq\x01" + b"h\x01h\x00\x85R0" * copies + b"h\x00."
    assert len(pickle.loads(pkl)) == n  # a valid pickle
    path = (_as_zip if fmt == "zip" else _as_legacy)(pkl, tmp_path / f"copies.{fmt}")
    with pytest.raises(SSDError, match="copies more data than the file holds"):
        restricted_load(path)
    # A single copy is within the budget.
    once = b"\x80\x02]q\x00(" + b"N" * n + b"ec__builtin__\nlist\nq\x01h\x01h\x00\x85R."
    assert restricted_load((_as_zip if fmt == "zip" else _as_legacy)(once, tmp_path / f"once.{fmt}")) == [None] * n


def test_restricted_load_round_trips_plain_data(tmp_path):
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    obj = {
        "view": x[:, 1:, ::2],  # non-contiguous view, storage offset
        "same": x,
        "int": torch.arange(5, dtype=torch.int64),
        "half": torch.ones(3, dtype=torch.float16),
        "bool": torch.tensor([True, False]),
        "param": nn.Parameter(torch.full((2,), 3.0)),
        "od": collections.OrderedDict(a=1, b=[1, 2, (3, 4)]),
        "set": {1, 2},
        "bytes": b"\x00\xff",
        "none": None,
    }
    for fmt in ("zip", "legacy"):
        got = restricted_load(_save(obj, tmp_path / f"plain.{fmt}", fmt))
        for k in ("view", "same", "int", "half", "bool"):
            assert torch.equal(got[k], obj[k]) and got[k].dtype == obj[k].dtype, k
        assert type(got["param"]) is torch.Tensor and torch.equal(got["param"], obj["param"].detach())
        assert got["od"] == obj["od"] and got["set"] == {1, 2} and got["bytes"] == b"\x00\xff"
        assert got["none"] is None
        # Views share memory with their base, as torch.load gives them.
        assert got["view"].untyped_storage().data_ptr() == got["same"].untyped_storage().data_ptr()


# --- full-size pickles with stand-in classes named like the tutorial's ------------------------------


def _conv(state: dict, name: str) -> nn.Conv2d:
    w, b = state[name + ".weight"], state[name + ".bias"]
    conv = torch.nn.utils.skip_init(nn.Conv2d, w.shape[1], w.shape[0], w.shape[2:], padding=1)
    conv.weight, conv.bias = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    return conv


def _tutorial_module(state: dict, priors: torch.Tensor | None) -> types.ModuleType:
    """A throwaway module named ``model`` with classes like the tutorial's, holding ``state``."""
    mod = types.ModuleType("model")

    def submodule(prefix: str) -> list[str]:
        return list(dict.fromkeys(k[len(prefix):].rsplit(".", 1)[0] for k in state if k.startswith(prefix)))

    class VGGBase(nn.Module):
        def __init__(self):
            super().__init__()
            for name in submodule("base."):
                setattr(self, name, _conv(state, "base." + name))
                if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3"):
                    setattr(self, "pool" + name[4], nn.MaxPool2d(2, 2, ceil_mode=name == "conv3_3"))
            self.pool5 = nn.MaxPool2d(3, 1, 1)

    class AuxiliaryConvolutions(nn.Module):
        def __init__(self):
            super().__init__()
            for name in submodule("aux_convs."):
                setattr(self, name, _conv(state, "aux_convs." + name))

    class PredictionConvolutions(nn.Module):
        def __init__(self, n_classes):
            super().__init__()
            self.n_classes = n_classes
            for name in submodule("pred_convs."):
                setattr(self, name, _conv(state, "pred_convs." + name))

    class SSD300(nn.Module):
        def __init__(self, n_classes):
            super().__init__()
            self.n_classes = n_classes
            self.base = VGGBase()
            self.aux_convs = AuxiliaryConvolutions()
            self.pred_convs = PredictionConvolutions(n_classes)
            self.rescale_factors = nn.Parameter(state["rescale_factors"].clone())
            if priors is not None:
                self.priors_cxcy = priors.clone()

    for cls in (VGGBase, AuxiliaryConvolutions, PredictionConvolutions, SSD300):
        cls.__module__, cls.__qualname__ = "model", cls.__name__
        setattr(mod, cls.__name__, cls)
    return mod


def _save_tutorial_checkpoint(state, priors, paths: dict[str, Path]) -> None:
    """torch.save({'epoch', 'model', 'optimizer'}) the way the tutorial's train.py does, in each format."""
    mod = _tutorial_module(state, priors)
    saved = sys.modules.get("model")
    sys.modules["model"] = mod
    try:
        model = mod.SSD300(n_classes=21)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        for fmt, path in paths.items():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Couldn't retrieve source code", UserWarning)
                _save({"epoch": 231, "model": model, "optimizer": optimizer}, path, fmt)
    finally:
        if saved is None:
            del sys.modules["model"]
        else:
            sys.modules["model"] = saved
    assert "model" not in sys.modules or sys.modules["model"] is saved


@pytest.fixture(scope="module")
def tutorial_files(tmp_path_factory, tutorial_recipe_state, tutorial_golden):
    d = tmp_path_factory.mktemp("tutorial")
    paths = {fmt: d / f"checkpoint_ssd300.{fmt}.pth.tar" for fmt in ("zip", "legacy")}
    _save_tutorial_checkpoint(tutorial_recipe_state, tutorial_golden["priors_cxcy"], paths)
    return paths


def test_full_tutorial_checkpoint_converts_and_matches_golden(tutorial_files, tutorial_recipe_state, tutorial_golden,
                                                              tmp_path):  # fmt: skip
    named = _pickle_globals(tutorial_files["zip"])
    assert {("model", "SSD300"), ("model", "VGGBase"), ("torch.nn.modules.conv", "Conv2d")} <= named
    assert "model" not in sys.modules  # the stand-in classes cannot be imported by the loader
    out = convert_tutorial(tutorial_files["zip"], tmp_path / "zip.ckpt")
    assert "model" not in sys.modules
    ckpt = load_checkpoint(out)
    assert ckpt["source"] == {"converter": "tutorial", "file": tutorial_files["zip"].name, "epoch": 231}
    model = load_model(out)
    assert model.class_names == VOC_CLASSES and model.config.preset == "ssd300"
    with torch.no_grad():
        loc, logits = model(tutorial_golden["images01"])
    torch.testing.assert_close(loc, tutorial_golden["loc_offsets"], rtol=0, atol=1e-4)
    torch.testing.assert_close(logits, tutorial_golden["cls_logits"], rtol=0, atol=1e-4)


def test_full_tutorial_checkpoint_legacy_format(tutorial_files, tutorial_recipe_state, tmp_path):
    # The same weights bit for bit as the zip file (whose conversion reproduces the golden outputs).
    state = read_tutorial_checkpoint(tutorial_files["legacy"])
    assert list(state) == list(tutorial_recipe_state)
    assert all(torch.equal(state[k], tutorial_recipe_state[k]) for k in state)
    out = convert_tutorial(tutorial_files["legacy"], tmp_path / "legacy.ckpt")
    expected = tutorial_to_state(tutorial_recipe_state)
    got = load_checkpoint(out)["model"]
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_mismatching_priors_are_refused(tutorial_recipe_state, tutorial_golden, tmp_path):
    priors = tutorial_golden["priors_cxcy"].clone()
    priors[5000, 2] += 1e-4
    path = tmp_path / "other_priors.pth.tar"
    _save_tutorial_checkpoint(tutorial_recipe_state, priors, {"zip": path})
    with pytest.raises(SSDError, match=r"priors_cxcy differ .* by up to 0\.0001"):
        convert_tutorial(path, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


@pytest.fixture(scope="module")
def plain_state_files(tmp_path_factory, tutorial_recipe_state):
    d = tmp_path_factory.mktemp("plain")
    state = collections.OrderedDict(tutorial_recipe_state)
    return {fmt: _save(state, d / f"state.{fmt}.pt", fmt) for fmt in ("zip", "legacy")}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_plain_state_dict_converts(fmt, plain_state_files, tutorial_recipe_state, tmp_path):
    out = convert_tutorial(plain_state_files[fmt], tmp_path / "plain.ckpt")
    expected = tutorial_to_state(tutorial_recipe_state)
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["preset"] == "ssd300" and tuple(ckpt["config"]["class_names"]) == VOC_CLASSES
    assert set(ckpt["model"]) == set(expected)
    assert all(torch.equal(ckpt["model"][k], expected[k]) for k in expected)


def test_class_count_must_fit_the_heads(plain_state_files, tmp_path):
    with pytest.raises(SSDError, match="21 classes .* 5 class names"):
        convert_tutorial(plain_state_files["zip"], tmp_path / "out.ckpt", class_names=VOC_CLASSES[:5])
    assert not (tmp_path / "out.ckpt").exists()


# --- torchvision --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv_model():
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(20261127)
    return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()


@pytest.fixture(scope="module")
def tv_input():
    g = torch.Generator().manual_seed(7)
    return torch.rand(1, 3, 300, 300, generator=g)


@pytest.fixture(scope="module")
def tv_features(tv_model, tv_input):
    """torchvision's own normalisation (checked to involve no resizing) and backbone features."""
    with torch.no_grad():
        images, _ = tv_model.transform(list(tv_input))
        assert images.tensors.shape == (1, 3, 300, 300) and images.image_sizes == [(300, 300)]
        assert torch.equal(images.tensors[0], tv_model.transform.normalize(tv_input[0]))
        feats = list(tv_model.backbone(images.tensors).values())
        anchors = tv_model.anchor_generator(images, feats)
    return images, feats, anchors


def _tv_to_ours(tv_model, class_names=VOC_CLASSES, tmp_path=None):
    if tmp_path is None:
        model = build_model("ssd300-torchvision", class_names)
        model.load_state_dict(torchvision_state_to_ours(tv_model.state_dict(), model.config))
        return model.eval()
    path = tmp_path / "tv_state.pth"
    torch.save(tv_model.state_dict(), path)
    return load_model(convert_torchvision(tmp_path / "tv.ckpt", weights=path, class_names=class_names))


def test_torchvision_priors_equal_ours(tv_model, tv_features):
    images, feats, anchors = tv_features
    ours = build_model("ssd300-torchvision").priors_cxcywh
    grid = [f.shape[-2:] for f in feats]
    theirs = tv_model.anchor_generator._grid_default_boxes(grid, [300, 300])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # and as the pixel corners torchvision decodes against
    xyxy = torch.cat([ours[:, :2] - ours[:, 2:] / 2, ours[:, :2] + ours[:, 2:] / 2], 1) * 300
    torch.testing.assert_close(xyxy, anchors[0], rtol=0, atol=1e-4)


def test_torchvision_raw_outputs_equal(tv_model, tv_input, tv_features, tmp_path):
    images, feats, _ = tv_features
    model = _tv_to_ours(tv_model, tmp_path=tmp_path)
    assert sum(p.numel() for p in model.parameters()) == 26_285_486
    with torch.no_grad():
        head = tv_model.head(feats)
        loc, logits = model(tv_input)
    torch.testing.assert_close(loc, head["bbox_regression"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, head["cls_logits"], rtol=1e-4, atol=1e-4)


def test_torchvision_detections_equal(tv_model, tv_input, tv_features):
    import copy

    images, feats, anchors = tv_features
    tv = copy.deepcopy(tv_model)
    with torch.no_grad():
        for conv in tv.head.classification_head.module_list:
            conv.weight.mul_(0.1)
        head = tv.head(feats)
        theirs = tv.postprocess_detections(head, anchors, images.image_sizes)[0]
    model = _tv_to_ours(tv)
    (ours,) = model.detect(tv_input, image_sizes=[(300, 300)])
    scores = theirs["scores"]
    assert len(scores) == 200 and len(set(scores.tolist())) == len(scores)  # kept scores all distinct
    # The setting exercises the 400-per-class cap: most classes have more candidates above 0.01.
    probs = torch.softmax(head["cls_logits"][0], -1)[:, 1:]
    assert ((probs > 0.01).sum(0) > 400).sum() >= 10
    assert torch.equal(ours.labels, theirs["labels"])
    torch.testing.assert_close(ours.scores, scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.boxes / 300, theirs["boxes"] / 300, rtol=0, atol=1e-4)
    # Clipping to the image happened for some kept boxes.
    assert ((theirs["boxes"] == 0) | (theirs["boxes"] == 300)).any()


def test_a_converted_torchvision_model_detects_what_torchvision_detects_from_files(tv_model, tmp_path):
    """From JPEG files, not ready-made tensors: torchvision's model is given the decoded image as floats (its
    transform normalises and resizes them bilinearly, no antialiasing); ours, converted by ``ssd convert
    torchvision --weights FILE``, is given the file through the Detector (the ``ssd300-torchvision`` preset resizes
    as torchvision does). Same labels in the same order, scores within 1e-4, boxes within 0.01 px."""
    import copy

    from torchvision.io import read_image

    from conftest import VOCMINI
    from ssd.detector import Detector

    tv = copy.deepcopy(tv_model)
    with torch.no_grad():
        for conv in tv.head.classification_head.module_list:
            conv.weight.mul_(0.1)  # spread the scores: a few hundred distinct ones above 0.01 per image
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    assert main(["convert", "torchvision", str(tmp_path / "ours.ckpt"), "--weights", str(tmp_path / "tv.pth"),
                 "--classes", ",".join(VOC_CLASSES)]) == 0  # fmt: skip
    ours = Detector.from_checkpoint(tmp_path / "ours.ckpt", device="cpu", min_score=0.01, max_overlap=0.45, top_k=200)
    files = sorted(need(VOCMINI / "JPEGImages").glob("*.jpg"))[:3]
    with torch.no_grad():
        theirs = tv([read_image(str(f)).float() / 255.0 for f in files])
    for file, t in zip(files, theirs):
        o = ours(file)
        assert len(t["scores"]) == 200 and tuple(o.labels.tolist()) == tuple(t["labels"].tolist()), file.name
        torch.testing.assert_close(torch.as_tensor(o.scores), t["scores"], rtol=0, atol=1e-4)
        torch.testing.assert_close(torch.as_tensor(o.boxes), t["boxes"], rtol=0, atol=0.01)


def test_torchvision_decoding_clamps_sizes():
    from torchvision.models.detection import _utils as det_utils

    from ssd.boxes import cxcywh_to_xyxy, decode

    cfg = get_preset("ssd300-torchvision")
    priors = priors_for(cfg)[:500]
    g = torch.Generator().manual_seed(3)
    offsets = torch.randn(500, 4, generator=g) * 30  # many size offsets beyond the clamp
    assert (offsets[:, 2:] * 0.2 > math.log(1000 / 16)).any()
    coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    anchors = cxcywh_to_xyxy(priors) * 300
    theirs = coder.decode_single(offsets, anchors) / 300
    ours = cxcywh_to_xyxy(decode(offsets, priors, cfg.decode.size_clamp))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_torchvision_splits_vgg16_at_pool4(tv_model):
    # backbone.features is VGG16's features before pool4 (index 23); backbone.extra.0 starts with pool4.
    assert len(tv_model.backbone.features) == 23 and isinstance(tv_model.backbone.features[22], nn.ReLU)
    assert isinstance(tv_model.backbone.extra[0][0], nn.MaxPool2d)
    assert [i for i, m in enumerate(tv_model.backbone.extra[0]) if isinstance(m, nn.Conv2d)] == [1, 3, 5]


def test_torchvision_head_order_is_torchvisions(tv_model):
    # The preset's per-position order is torchvision's: heads are copied unpermuted.
    cfg = get_preset("ssd300-torchvision")
    tv_state = tv_model.state_dict()
    mapped = torchvision_state_to_ours(tv_state, cfg)
    for k in range(6):
        assert torch.equal(mapped[f"loc_heads.{k}.weight"], tv_state[f"head.regression_head.module_list.{k}.weight"])
        assert torch.equal(mapped[f"cls_heads.{k}.bias"], tv_state[f"head.classification_head.module_list.{k}.bias"])
    # Another order permutes the heads' prior groups so that each prior keeps its weights.
    ratios_6 = (1.0, "extra", 2.0, 3.0, 0.5, 0.333)
    ratios = ((1.0, "extra", 0.5, 2.0),) + (ratios_6,) * 3 + ((1.0, "extra", 2.0, 0.5),) * 2
    other = cfg.replace(priors=dataclasses.replace(cfg.priors, aspect_ratios=ratios))
    mapped = torchvision_state_to_ours(tv_state, other)
    ours_p, tv_p = priors_for(other), priors_for(cfg)
    start = 0
    for k, (f, a) in enumerate(zip(other.feature_map_sizes, other.priors.priors_per_position)):
        first_ours, first_tv = ours_p[start : start + a], tv_p[start : start + a]  # position (0, 0)
        start += f * f * a
        w_ours = mapped[f"cls_heads.{k}.weight"].reshape(a, 21, -1)
        w_tv = tv_state[f"head.classification_head.module_list.{k}.weight"].reshape(a, 21, -1)
        for j in range(a):
            i = int(((first_tv - first_ours[j]).abs().sum(1)).argmin())
            assert (first_tv[i] - first_ours[j]).abs().max() < 2e-3  # 0.333 vs 1/3
            assert torch.equal(w_ours[j], w_tv[i])


def test_coco_class_names_keep_category_ids():
    from torchvision.models.detection import SSD300_VGG16_Weights

    categories = SSD300_VGG16_Weights.COCO_V1.meta["categories"]  # available offline
    names = coco_class_names()
    assert len(categories) == 91 and len(names) == 90 and len(set(names)) == 90
    assert names[1 - 1] == "person" and names[13 - 1] == "stop sign" and names[90 - 1] == "toothbrush"
    placeholders = [i + 1 for i, n in enumerate(names) if n.startswith("N/A")]
    assert placeholders == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert all(names[i - 1] == f"N/A_{i}" for i in placeholders)
    assert all(names[i - 1] == categories[i] for i in range(1, 91) if i not in placeholders)
    get_preset("ssd300-torchvision", names)  # a valid configuration


def test_torchvision_coco_file_converts(tv_model, tmp_path):
    # A 91-class state dict (COCO's shape) from a local file: class names come from the weights' metadata.
    g = torch.Generator().manual_seed(5)
    state = dict(tv_model.state_dict())
    for k in range(6):
        a = state[f"head.regression_head.module_list.{k}.bias"].shape[0] // 4
        w = state[f"head.classification_head.module_list.{k}.weight"]
        state[f"head.classification_head.module_list.{k}.weight"] = torch.randn(a * 91, *w.shape[1:], generator=g)
        state[f"head.classification_head.module_list.{k}.bias"] = torch.randn(a * 91, generator=g)
    path = tmp_path / "ssd300_vgg16_coco.pth"
    torch.save(state, path)
    out = convert_torchvision(tmp_path / "coco.ckpt", weights=path)
    ckpt = load_checkpoint(out)
    assert tuple(ckpt["config"]["class_names"]) == coco_class_names()
    assert ckpt["config"]["preset"] == "ssd300-torchvision"
    assert ckpt["source"] == {"converter": "torchvision", "weights": path.name}
    assert torch.equal(ckpt["model"]["cls_heads.3.weight"], state["head.classification_head.module_list.3.weight"])
    assert torch.equal(ckpt["model"]["l2norm.weight"], state["backbone.scale_weight"])
    # The 21-class file needs its class names.
    path21 = tmp_path / "tv21.pth"
    torch.save(tv_model.state_dict(), path21)
    with pytest.raises(SSDError, match="give their 20 foreground class names"):
        convert_torchvision(tmp_path / "x.ckpt", weights=path21)
    with pytest.raises(SSDError, match="21 classes"):
        convert_torchvision(tmp_path / "x.ckpt", weights=path21, class_names=VOC_CLASSES[:3])
    with pytest.raises(SSDError, match="not found"):
        convert_torchvision(tmp_path / "x.ckpt", weights=tmp_path / "missing.pth")


def test_torchvision_download_offline_is_an_error(tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SSDError, match=r"could not download .*ssd300_vgg16_coco-b556d3b4\.pth"):
        convert_torchvision(tmp_path / "coco.ckpt")
    assert not (tmp_path / "coco.ckpt").exists()
