"""The benchmark's correctness checks, on small inputs (speed goals live in bench/, not here)."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "compare.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_compare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_postprocessing_is_identical_to_the_exact_reference_and_torchvision():
    bench = _load()
    args = Namespace(post_batch=3, post_iters=1, windows=1, post_check_images=3)
    res = bench.bench_post(args, torch.device("cpu"), {"channels_last": False, "compile": False})
    assert res["identical_to_exact_reference"] and res["identical_to_torchvision"]
    assert 40 <= res["candidates_per_class_per_image"] <= 120  # the realistic load the figure claims
    assert res["detections_per_image"] == 200


def test_matrix_nms_postprocessing_is_identical_too(monkeypatch):
    """The GPU's default NMS method, run on the CPU, against the same oracle."""
    import functools

    import ssd.postprocess as pp

    monkeypatch.setattr(pp, "grouped_nms", functools.partial(pp.grouped_nms, method="matrix"))
    bench = _load()
    args = Namespace(post_batch=3, post_iters=1, windows=1, post_check_images=3)
    res = bench.bench_post(args, torch.device("cpu"), {"channels_last": False, "compile": False})
    assert res["identical_to_exact_reference"] and res["identical_to_torchvision"]


def test_synthetic_head_outputs_are_deterministic():
    bench = _load()
    a = bench.synthetic_head_outputs(2, 100, 21, torch.device("cpu"))
    b = bench.synthetic_head_outputs(2, 100, 21, torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
