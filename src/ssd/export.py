"""ONNX export of an SSD, and running the exported model with onnxruntime.

::

    SSD -> export_onnx -> MODEL.onnx (DecodedSSD: network, softmax, box decoding; ssd metadata)
    images (N, 3, S, S) -> OnnxModel -> (boxes_xyxy_rel (N, P, 4), scores (N, P, C)) numpy
      -> ssd.postprocess.postprocess_decoded (threshold, per-class NMS, top-k) -> detections

What the ONNX graph holds, and what runs after it
-------------------------------------------------

The exported graph is :class:`ssd.postprocess.DecodedSSD`: the network plus the softmax and the box
decoding::

    images  float32 (N, 3, S, S)  RGB in [0, 1], already resized to S x S (the model's input side;
                                   resize with antialiasing, as ``ssd detect`` and ``ssd eval`` do).
                                   Mean/std normalisation is inside the graph.
    boxes   float32 (N, P, 4)     xyxy as fractions of the image, one per prior (clipped to [0, 1]
                                   when the model's decoding clips, e.g. ssd300-torchvision)
    scores  float32 (N, P, C)     softmax class scores; column 0 is background, column c is label c

``N`` is a dynamic axis (``--batch dynamic``, the default) or fixed (``--batch 4``). Thresholding,
per-class non-maximum suppression and top-k run **after** onnxruntime, in
:func:`ssd.postprocess.postprocess_decoded` (torch/torchvision on the CPU, the same code the PyTorch
path of :class:`ssd.detector.Detector` runs), because NMS inside an ONNX graph (``NonMaxSuppression``)
is not exact: it has no per-image top-k across classes, treats its IoU threshold and score ties in
ways that differ between runtimes, and cannot reproduce the model's per-class candidate cap. The
post-step, for every image::

    keep = scores[:, 1:] > min_score                         # per prior and foreground class
    (at most ``candidates_per_class`` best priors per class, when the model has such a cap)
    greedy NMS per class (IoU > max_overlap suppresses), best score first
    the best ``top_k`` detections of the image; boxes times (width, height) of the original image

which equals :func:`ssd.postprocess.postprocess` on the raw outputs (tested exactly).

The file's ``metadata_props`` describe it: ``ssd.format`` (``ssd-onnx``), ``ssd.class_names``
(JSON list, label ``i`` is ``class_names[i - 1]``), ``ssd.image_size`` (S), ``ssd.input_resize`` (how images are
brought to S x S: ``antialias`` or ``bilinear``, :func:`ssd.data.transforms.resize_for_model`), ``ssd.candidates_per_class``
(empty for none), ``ssd.preset``, ``ssd.library_version``, and one-line descriptions of the
input, the outputs and the post-step. :class:`OnnxModel` reads them back; ``ssd detect --onnx
MODEL.onnx`` and ``Detector.from_onnx`` use it.

The exporter
------------

torch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``): the TorchScript
exporter (``dynamo=False``) is deprecated, and a file format we promise should not depend on it. It
needs ``onnxscript`` (and ``onnx``) at export time and torch 2.6 or newer; it writes opset 18 or newer
(this network's graph cannot be converted down to older opsets). Running the file needs only
``onnxruntime``. All three imports are lazy: the rest of the package works without them, and a missing
one is an :class:`~ssd.errors.SSDError` saying what to ``pip install``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssd.errors import SSDError
from ssd.paths import write_atomically
from ssd.onnx_format import DEFAULT_OPSET, FORMAT, FORMAT_VERSION, MIN_OPSET
from ssd.postprocess import DecodedSSD

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "OnnxModel", "export_onnx", "require_export_dependencies"]


_PIP_EXPORT = "pip install onnx onnxscript onnxruntime"
_PIP_RUN = "pip install onnxruntime"


# --- export --------------------------------------------------------------------------------------


def require_export_dependencies() -> Any:
    """The ``onnx`` module, once ``onnx`` and ``onnxscript`` import; :class:`SSDError` naming what to install."""
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SSDError(f"ONNX export needs {' and '.join(missing)}: {_PIP_EXPORT}")
    import onnx

    return onnx


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise SSDError(f"running an ONNX model needs onnxruntime: {_PIP_RUN}") from err
    return onnxruntime


def _metadata(config, batch: int | None) -> dict[str, str]:
    from ssd.version import __version__

    s = config.image_size
    cap = config.decode.candidates_per_class
    return {
        "ssd.format": FORMAT,
        "ssd.format_version": str(FORMAT_VERSION),
        "ssd.library_version": __version__,
        "ssd.preset": config.preset,
        "ssd.class_names": json.dumps(list(config.class_names)),
        "ssd.image_size": str(s),
        "ssd.input_resize": config.input_resize,
        "ssd.candidates_per_class": "" if cap is None else str(cap),
        "ssd.batch": "dynamic" if batch is None else str(batch),
        "ssd.input": f"images float32 (N, 3, {s}, {s}) RGB in [0, 1], resized "
        + ("with antialiasing" if config.input_resize == "antialias" else "bilinearly as floats, no antialiasing")
        + "; normalisation is inside the graph",
        "ssd.outputs": "boxes float32 (N, P, 4) xyxy fractions of the image; scores float32 (N, P, C) "
        "softmax, column 0 background, label i is class_names[i - 1]",
        "ssd.postprocess": "per image: scores[:, 1:] > min_score, at most candidates_per_class priors per "
        "class, greedy per-class NMS (IoU > max_overlap suppressed), best top_k; see "
        "ssd.postprocess.postprocess_decoded",
    }


def _check_export_options(onnx: Any, opset: Any, batch: Any) -> None:
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        raise SSDError(f"ssd export needs torch >= 2.6 (its torch.export-based ONNX exporter); this is {torch.__version__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise SSDError(f"opset {opset!r}: the exporter writes opset {MIN_OPSET} or newer")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise SSDError(f"opset {opset}: the installed onnx knows opsets up to {newest}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise SSDError(f"batch {batch!r}: give a positive batch size, or None for a dynamic batch")


def _to_onnx(wrapper: nn.Module, image_size: int, opset: int, batch: int | None) -> Any:
    """The wrapper's ONNX ModelProto, exported quietly (the exporter's logging and printing are silenced)."""
    example_n = 2 if batch is None else batch  # a batch of 1 would let torch.export specialise the axis
    example = torch.rand(example_n, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    kwargs: dict[str, Any] = {}
    if batch is None:
        kwargs["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch", min=1)}}
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), None, dynamo=True, verbose=False, opset_version=opset,
                input_names=["images"], output_names=["boxes", "scores"], external_data=False, **kwargs,
            )  # fmt: skip
            return program.model_proto
    except SSDError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise SSDError(f"ONNX export failed (opset {opset}): {type(err).__name__}: {first}") from err
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _verify(wrapper: nn.Module, path: Path, image_size: int, batch: int | None) -> float | None:
    """The largest difference between onnxruntime's outputs and PyTorch's on a random batch (``None`` without
    onnxruntime); :class:`SSDError` above 1e-3."""
    try:
        _require_onnxruntime()
    except SSDError:
        return None
    n = 3 if batch is None else batch
    x = torch.rand(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_boxes, ref_scores = wrapper(x)
    boxes, scores = OnnxModel(path, device="cpu")(x.numpy())
    max_diff = float(max(np.abs(boxes - ref_boxes.numpy()).max(), np.abs(scores - ref_scores.numpy()).max()))
    if not max_diff <= 1e-3:
        raise SSDError(f"{path}: onnxruntime's outputs differ from PyTorch's by {max_diff:.3g} (> 1e-3)")
    return max_diff


def export_onnx(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Export an SSD (or the checkpoint at ``model``) to ONNX at ``path``; see the module docstring.

    SSD -> copy on the CPU in eval mode -> DecodedSSD -> torch.onnx.export -> metadata -> onnx.checker -> file
    (-> onnxruntime against PyTorch). The caller's model keeps its device and mode.

    Args:
        model: an :class:`~ssd.model.SSD` or a checkpoint path.
        path: the ``.onnx`` file to write (one self-contained file, written atomically).
        opset: ONNX opset, at least 18.
        batch: ``None`` for a dynamic batch axis, or a fixed batch size.
        verify: when onnxruntime is installed, run the file on a random batch and compare its
            outputs with PyTorch's (raises :class:`SSDError` above 1e-3).
    Returns:
        ``{"path", "opset", "batch", "max_abs_diff" (None without verification), "class_names",
        "image_size"}``.
    """
    onnx = require_export_dependencies()
    _check_export_options(onnx, opset, batch)
    if not isinstance(model, nn.Module):
        from ssd.checkpoint import load_model

        model = load_model(model)
    model = copy.deepcopy(model).to("cpu").eval()
    config = model.config
    wrapper = DecodedSSD(model).eval()
    proto = _to_onnx(wrapper, config.image_size, opset, batch)
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise SSDError(f"ONNX export wrote opset {got_opset}, not the requested {opset}; try --opset {got_opset}")
    del proto.metadata_props[:]
    for key, value in _metadata(config, batch).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise SSDError(f"the exported graph does not pass onnx.checker: {err}") from err
    path = Path(path)
    data = proto.SerializeToString()
    write_atomically(path, lambda f: f.write(data))
    max_diff = _verify(wrapper, path, config.image_size, batch) if verify else None
    return {
        "path": str(path),
        "opset": opset,
        "batch": "dynamic" if batch is None else batch,
        "max_abs_diff": max_diff,
        "class_names": list(config.class_names),
        "image_size": config.image_size,
    }


# --- running -------------------------------------------------------------------------------------


class OnnxModel:
    """An exported SSD run with onnxruntime: ``OnnxModel(path)(images) -> (boxes, scores)``.

    ``images`` float32 (N, 3, S, S) RGB in [0, 1] (numpy or torch); returns numpy ``boxes``
    (N, P, 4) xyxy fractions and ``scores`` (N, P, C). ``class_names``, ``image_size`` and
    ``candidates_per_class`` come from the file's metadata, ``num_priors`` (P) from its output shape. ``device``: ``auto`` (CUDA when
    onnxruntime has it), ``cpu`` or ``cuda[:N]``.
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto") -> None:
        ort = _require_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise SSDError(f"{path}: ONNX model not found")
        available = ort.get_available_providers()
        dev = str(device)
        if dev == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
        elif dev == "auto" or dev.startswith("cuda"):
            index = int(dev.split(":", 1)[1]) if dev.startswith("cuda:") else 0
            if "CUDAExecutionProvider" in available:
                providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
            elif dev == "auto":
                providers = ["CPUExecutionProvider"]
            else:
                raise SSDError(
                    f"device {dev}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
                )
        else:
            raise SSDError(f"device {dev}: onnxruntime runs on auto, cpu or cuda[:N]")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise SSDError(f"{path}: onnxruntime cannot load it: {first}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("ssd.format") != FORMAT or "ssd.class_names" not in meta:
            raise SSDError(f"{path}: not written by `ssd export` (no ssd metadata); export it again")
        try:
            version = int(meta.get("ssd.format_version", "0"))
            self.class_names: tuple[str, ...] = tuple(json.loads(meta["ssd.class_names"]))
            self.image_size = int(meta["ssd.image_size"])
            self.input_resize = meta.get("ssd.input_resize", "antialias")  # files written before it: antialias
            if self.input_resize not in ("antialias", "bilinear"):
                raise ValueError(f"ssd.input_resize {self.input_resize!r}")
            cap = meta.get("ssd.candidates_per_class", "")
            self.candidates_per_class: int | None = int(cap) if cap else None
            quant = meta.get("ssd.quantization")
            self.quantization: dict[str, Any] | None = dict(json.loads(quant)) if quant else None  # ssd.quantize
        except (ValueError, KeyError, TypeError) as err:
            raise SSDError(f"{path}: invalid ssd metadata ({err})") from err
        if version > FORMAT_VERSION:
            raise SSDError(f"{path}: ssd-onnx format {version} is newer than this library reads; upgrade ssd")
        self.preset = meta.get("ssd.preset", "")
        if self.quantization is not None and providers == ["CPUExecutionProvider"]:
            from ssd.quantize import int8_dot_product_cpu

            if int8_dot_product_cpu() is False:
                logging.getLogger("ssd").warning(
                    "ssd: warning: %s is int8 and this CPU has no 8-bit dot-product instructions: it may run slower "
                    "than the fp32 export", path,
                )  # fmt: skip
        self.path = path
        inputs = self.session.get_inputs()
        self._input_name = inputs[0].name
        batch_dim = inputs[0].shape[0]
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) else None
        priors_dim = self.session.get_outputs()[0].shape[1]
        self.num_priors: int | None = priors_dim if isinstance(priors_dim, int) else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def __call__(self, images: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(images, Tensor):
            images = images.detach().cpu().numpy()
        images = np.ascontiguousarray(images, dtype=np.float32)
        n = images.shape[0]
        fb = self.fixed_batch
        if fb is None or n == fb:
            boxes, scores = self.session.run(None, {self._input_name: images})
            return boxes, scores
        # A fixed-batch file: run in chunks of its batch, padding the last one.
        out_b, out_s = [], []
        for start in range(0, n, fb):
            chunk = images[start : start + fb]
            m = chunk.shape[0]
            if m < fb:
                chunk = np.concatenate([chunk, np.zeros((fb - m, *chunk.shape[1:]), np.float32)])
            b, s = self.session.run(None, {self._input_name: chunk})
            out_b.append(b[:m])
            out_s.append(s[:m])
        return np.concatenate(out_b), np.concatenate(out_s)
