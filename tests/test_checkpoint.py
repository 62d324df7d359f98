"""Checkpoints: self-describing, atomic, read with weights_only, rebuilt from their configuration."""

from __future__ import annotations

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
