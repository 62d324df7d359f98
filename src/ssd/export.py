"""ONNX export of an SSD, and running the exported model with onnxruntime.

What the ONNX graph holds, and what runs after it
-------------------------------------------------

The exported graph is :class:`DecodedSSD`: the network plus the softmax and the box decoding::

    images  float32 (N, 3, S, S)  RGB in [0, 1], already resized to S x S (the model's input side;
                                   resize with antialiasing, as ``ssd detect`` and ``ssd eval`` do).
                                   Mean/std normalisation is inside the graph.
    boxes   float32 (N, P, 4)     xyxy as fractions of the image, one per prior (clipped to [0, 1]
                                   when the model's decoding clips, e.g. ssd300-torchvision)
    scores  float32 (N, P, C)     softmax class scores; column 0 is background, column c is label c

``N`` is a dynamic axis (``--batch dynamic``, the default) or fixed (``--batch 4``). Thresholding,
per-class non-maximum suppression and top-k run **after** onnxruntime, in
:func:`postprocess_decoded` (torch/torchvision on the CPU, the same code the PyTorch path of
:class:`ssd.detector.Detector` runs), because NMS inside an ONNX graph (``NonMaxSuppression``) is
not exact: it has no per-image top-k across classes, treats its IoU threshold and score ties in
ways that differ between runtimes, and cannot reproduce the model's per-class candidate cap. The
post-step, for every image::

    keep = scores[:, 1:] > min_score                         # per prior and foreground class
    (at most ``candidates_per_class`` best priors per class, when the model has such a cap)
    greedy NMS per class (IoU > max_overlap suppresses), best score first
    the best ``top_k`` detections of the image; boxes times (width, height) of the original image

which equals :func:`ssd.postprocess.postprocess` on the raw outputs (tested exactly).

The file's ``metadata_props`` describe it: ``ssd.format`` (``ssd-onnx``), ``ssd.class_names``
(JSON list, label ``i`` is ``class_names[i - 1]``), ``ssd.image_size`` (S), ``ssd.candidates_per_class``
(empty for none), ``ssd.preset``, ``ssd.library_version``, and one-line descriptions of the
input, the outputs and the post-step. :class:`OnnxModel` reads them back; ``ssd detect --onnx
MODEL.onnx`` and ``Detector.from_onnx`` use it.

The exporter
------------

We use torch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``), the
default since torch 2.9: the TorchScript exporter (``dynamo=False``) is deprecated and announced
for removal, so a file format we promise should not depend on it. It needs ``onnxscript`` (and
``onnx``) at export time; it writes opset 18 or newer (converting the graph down to older opsets
fails for this network). Running the file needs only ``onnxruntime``. All three imports are lazy:
the rest of the package works without them, and a missing one is an :class:`~ssd.errors.SSDError`
saying what to ``pip install``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ssd.boxes import cxcywh_to_xyxy, decode
from ssd.errors import SSDError
from ssd.postprocess import Detections, select_detections

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "DecodedSSD",
    "OnnxModel",
    "export_onnx",
    "postprocess_decoded",
]

DEFAULT_OPSET = 18
MIN_OPSET = 18
FORMAT = "ssd-onnx"
FORMAT_VERSION = 1

_PIP_EXPORT = "pip install onnx onnxscript onnxruntime"
_PIP_RUN = "pip install onnxruntime"


class DecodedSSD(nn.Module):
    """An SSD followed by softmax and box decoding: ``images -> (boxes_xyxy_rel, scores)``.

    ``boxes`` (N, P, 4) are xyxy fractions of the image (clipped to [0, 1] when the model's decoding
    clips), ``scores`` (N, P, C) softmax scores with column 0 the background. This is the graph
    :func:`export_onnx` writes; :func:`postprocess_decoded` turns its outputs into detections.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc_offsets, cls_logits = self.model(images)
        decode_config = self.model.config.decode
        scores = torch.softmax(cls_logits.float(), dim=-1)
        priors = self.model.priors_cxcywh.float()
        boxes = cxcywh_to_xyxy(decode(loc_offsets.float(), priors, decode_config.size_clamp))
        if decode_config.clip_boxes:
            boxes = boxes.clamp(0.0, 1.0)
        return boxes, scores


def postprocess_decoded(
    boxes_xyxy_rel: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    *,
    min_score: float = 0.01,
    max_overlap: float = 0.45,
    top_k: int = 200,
    candidates_per_class: int | None = None,
    image_sizes: Sequence[tuple[int, int]] | Tensor | None = None,
    suppress_labels: Sequence[int] = (),
) -> list[Detections]:
    """Detections from decoded outputs (the ONNX graph's, or :class:`DecodedSSD`'s).

    Args:
        boxes_xyxy_rel: (N, P, 4) xyxy fractions of the image.
        scores: (N, P, C) softmax scores, column 0 background.
        min_score: keep class scores strictly above this.
        max_overlap: suppress boxes whose IoU with a better box of the same class exceeds this.
        top_k: at most this many detections per image (the best scores).
        candidates_per_class: at most this many best priors per image and class before NMS
            (``ModelConfig.decode.candidates_per_class``; stored in the ONNX metadata).
        image_sizes: (height, width) per original image; boxes are then in its pixels.
        suppress_labels: labels (1..C-1) dropped before NMS and top-k.
    Returns:
        one :class:`~ssd.postprocess.Detections` per image, best score first; with
        ``suppress_labels=()`` exactly what :func:`ssd.postprocess.postprocess` returns for the raw
        outputs these were decoded from.
    """
    boxes = torch.as_tensor(boxes_xyxy_rel).float()
    scores = torch.as_tensor(scores).float()
    n, p, c = scores.shape
    k = c - 1
    scores = scores[..., 1:]
    if len(suppress_labels):
        keep_cls = torch.ones(k, dtype=torch.bool, device=scores.device)
        keep_cls[torch.as_tensor([int(l) - 1 for l in suppress_labels], device=scores.device)] = False
        scores = scores * keep_cls  # suppressed classes score 0, never above min_score >= 0

    return select_detections(
        boxes, scores, min_score=min_score, max_overlap=max_overlap, top_k=top_k,
        candidates_per_class=candidates_per_class, image_sizes=image_sizes,
    )  # fmt: skip


# --- export --------------------------------------------------------------------------------------


def _require_export_deps() -> Any:
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
    except ImportError:
        raise SSDError(f"running an ONNX model needs onnxruntime: {_PIP_RUN}") from None
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
        "ssd.candidates_per_class": "" if cap is None else str(cap),
        "ssd.batch": "dynamic" if batch is None else str(batch),
        "ssd.input": f"images float32 (N, 3, {s}, {s}) RGB in [0, 1], resized with antialiasing; "
        "normalisation is inside the graph",
        "ssd.outputs": "boxes float32 (N, P, 4) xyxy fractions of the image; scores float32 (N, P, C) "
        "softmax, column 0 background, label i is class_names[i - 1]",
        "ssd.postprocess": "per image: scores[:, 1:] > min_score, at most candidates_per_class priors per "
        "class, greedy per-class NMS (IoU > max_overlap suppressed), best top_k; see "
        "ssd.export.postprocess_decoded",
    }


def export_onnx(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Export an SSD (or the checkpoint at ``model``) to ONNX at ``path``; see the module docstring.

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
    onnx = _require_export_deps()
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        raise SSDError(f"ssd export needs torch >= 2.6 (its torch.export-based ONNX exporter); this is {torch.__version__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise SSDError(f"opset {opset!r}: the exporter writes opset {MIN_OPSET} or newer")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise SSDError(f"opset {opset}: the installed onnx knows opsets up to {newest}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise SSDError(f"batch {batch!r}: give a positive batch size, or None for a dynamic batch")
    if not isinstance(model, nn.Module):
        from ssd.checkpoint import load_model

        model = load_model(model)
    model = copy.deepcopy(model).to("cpu").eval()  # the caller's model keeps its device and mode
    config = model.config
    s = config.image_size
    wrapper = DecodedSSD(model).eval()
    example_n = 2 if batch is None else batch  # a batch of 1 would let torch.export specialise the axis
    example = torch.rand(example_n, 3, s, s, generator=torch.Generator().manual_seed(0))
    kwargs: dict[str, Any] = {}
    if batch is None:
        kwargs["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch", min=1)}}
    log = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), None, dynamo=True, verbose=False, opset_version=opset,
                input_names=["images"], output_names=["boxes", "scores"], external_data=False, **kwargs,
            )  # fmt: skip
            proto = program.model_proto
    except SSDError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SSDError(f"ONNX export failed (opset {opset}): {type(e).__name__}: {first}") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise SSDError(f"ONNX export wrote opset {got_opset}, not the requested {opset}; try --opset {got_opset}")
    del proto.metadata_props[:]
    for key, value in _metadata(config, batch).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise SSDError(f"the exported graph does not pass onnx.checker: {e}") from None

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise SSDError(f"{path}: cannot write ({e.strerror or e})") from None

    max_diff = None
    if verify:
        try:
            _require_onnxruntime()
        except SSDError:
            verify = False
    if verify:
        n = 3 if batch is None else batch
        x = torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref_boxes, ref_scores = wrapper(x)
        boxes, scores = OnnxModel(path, device="cpu")(x.numpy())
        max_diff = float(max(np.abs(boxes - ref_boxes.numpy()).max(), np.abs(scores - ref_scores.numpy()).max()))
        if not max_diff <= 1e-3:
            raise SSDError(f"{path}: onnxruntime's outputs differ from PyTorch's by {max_diff:.3g} (> 1e-3)")
    return {
        "path": str(path),
        "opset": opset,
        "batch": "dynamic" if batch is None else batch,
        "max_abs_diff": max_diff,
        "class_names": list(config.class_names),
        "image_size": s,
    }


# --- running -------------------------------------------------------------------------------------


class OnnxModel:
    """An exported SSD run with onnxruntime: ``OnnxModel(path)(images) -> (boxes, scores)``.

    ``images`` float32 (N, 3, S, S) RGB in [0, 1] (numpy or torch); returns numpy ``boxes``
    (N, P, 4) xyxy fractions and ``scores`` (N, P, C). ``class_names``, ``image_size`` and
    ``candidates_per_class`` come from the file's metadata. ``device``: ``auto`` (CUDA when
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
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SSDError(f"{path}: onnxruntime cannot load it: {first}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("ssd.format") != FORMAT or "ssd.class_names" not in meta:
            raise SSDError(f"{path}: not written by `ssd export` (no ssd metadata); export it again")
        try:
            version = int(meta.get("ssd.format_version", "0"))
            self.class_names: tuple[str, ...] = tuple(json.loads(meta["ssd.class_names"]))
            self.image_size = int(meta["ssd.image_size"])
            cap = meta.get("ssd.candidates_per_class", "")
            self.candidates_per_class: int | None = int(cap) if cap else None
        except (ValueError, KeyError, TypeError) as e:
            raise SSDError(f"{path}: invalid ssd metadata ({e})") from None
        if version > FORMAT_VERSION:
            raise SSDError(f"{path}: ssd-onnx format {version} is newer than this library reads; upgrade ssd")
        self.preset = meta.get("ssd.preset", "")
        self.path = path
        inputs = self.session.get_inputs()
        self._input_name = inputs[0].name
        batch_dim = inputs[0].shape[0]
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) else None

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
