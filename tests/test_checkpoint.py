"""Checkpoints: self-describing, atomic, read with weights_only, rebuilt from their configuration."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys

import pytest
import torch

from ssd import CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint
from ssd.checkpoint import FORMAT_VERSION


def test_round_trip_rebuilds_the_model_from_config_alone(tmp_path):
    torch.manual_seed(0)
    model = build_model("small", ["cat", "dog"], batch_norm=True).eval()
    path = save_checkpoint(model, tmp_path / "m.ckpt", step=7)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format_version"] == FORMAT_VERSION and raw["step"] == 7
    assert raw["config"]["class_names"] == ["cat", "dog"] and raw["config"]["batch_norm"] is True
    again = load_model(path)
    assert again.config == model.config
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        torch.testing.assert_close(again(x).cls_logits, model(x).cls_logits, rtol=0, atol=0)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    model = build_model("small", 1)
    save_checkpoint(model, tmp_path / "a.ckpt")
    save_checkpoint(model, tmp_path / "a.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"format": "ssd-checkpoint", "payload": evil}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    model = build_model("small", 1)
    good = save_checkpoint(model, tmp_path / "good.ckpt")
    data = good.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ssd checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    newer = torch.load(good, weights_only=True)
    newer["format_version"] = FORMAT_VERSION + 1
    torch.save(newer, tmp_path / "newer.ckpt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "newer.ckpt")


def test_mismatched_weights_say_which(tmp_path):
    ckpt = torch.load(save_checkpoint(build_model("small", 2), tmp_path / "a.ckpt"), weights_only=True)
    ckpt["config"]["class_names"] = ["a", "b", "c"]
    torch.save(ckpt, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match="other shapes"):
        load_model(tmp_path / "b.ckpt")


@pytest.mark.slow
def test_cli_info_and_errors(tmp_path):
    path = save_checkpoint(build_model("small", ["cat", "dog"]), tmp_path / "m.ckpt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "ssd.cli", "info", str(path), "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    import json

    info = json.loads(out.stdout)
    assert info["preset"] == "small" and info["class_names"] == ["cat", "dog"] and info["num_priors"] == 3458
    bad = subprocess.run([sys.executable, "-m", "ssd.cli", "info", str(tmp_path / "nope.ckpt")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("ssd: error:") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


Pair = collections.namedtuple("Pair", "a b")  # at module level: pickle finds it


def _oracle_cases() -> dict[str, object]:
    import pathlib

    import numpy as np

    return {
        "numpy scalar": np.float64(1), "numpy array": np.zeros(2), "numpy int": np.int64(3), "object": object(),
        "path": pathlib.Path("x"), "named tuple": Pair(1, 2), "range": range(3), "slice": slice(1),
        "nested": {"a": [1, (2, 3.0)], 3: None, (1, 2): {4}}, "tensor": torch.zeros(2),
        "parameter": torch.nn.Parameter(torch.zeros(1)), "bf16": torch.zeros(1, dtype=torch.bfloat16),
        "ordered": collections.OrderedDict(a=1), "text": "s", "bytes": b"b", "dtype": torch.float32,
        "device": torch.device("cpu"), "size": torch.Size([2]), "set": {1, 2}, "complex": 1j, "float key": {1.5: 1},
        "array deep inside": {"a": [1, {"b": np.zeros(1)}]}, "path as a key": {pathlib.Path("k"): 1},
        "counter": collections.Counter(a=2), "bytearray": bytearray(b"ab"), "layout": torch.strided,
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_oracle_cases()))
def test_save_refuses_exactly_what_loading_would_refuse(tmp_path, name):
    """torch's own weights_only loader is the oracle: what it cannot rebuild, save_checkpoint refuses to write
    (naming where it sits), and what it rebuilds, save_checkpoint writes and load_checkpoint reads back."""
    import io

    value = _oracle_cases()[name]
    buf = io.BytesIO()
    torch.save({"x": value}, buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
        refused_by_torch = False
    except pickle.UnpicklingError:
        refused_by_torch = True
    model = build_model("small", 1)
    if refused_by_torch:
        with pytest.raises(CheckpointError, match=r"cannot save extra\b.*\(weights_only\) would refuse"):
            save_checkpoint(model, tmp_path / "m.ckpt", extra=value)
        assert not (tmp_path / "m.ckpt").exists()
    else:
        save_checkpoint(model, tmp_path / "m.ckpt", extra=value)
        assert "extra" in load_checkpoint(tmp_path / "m.ckpt")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask_and_keep_a_replaced_files_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(build_model("small", 1), tmp_path / "m.ckpt")
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        path.chmod(0o640)
        save_checkpoint(build_model("small", 1), path)  # a rewrite keeps the mode the file had
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
