"""int8 inference on the CPU: static quantization of an exported model with ONNX Runtime.

::

    SSD -> export_onnx (fp32 file) -> quant_pre_process (shape inference, graph folding)
      -> quantize_static: QDQ format, int8 weights per output channel, uint8 activations whose ranges come from
         calibration images (MinMax over the images, prepared exactly as ``ssd detect`` prepares its inputs)
      -> MODEL.onnx: the same inputs, outputs and ssd metadata as ``ssd export``'s, plus ``ssd.quantization``
      -> Detector.from_onnx / ``ssd detect --onnx`` / ``ssd eval --onnx`` / ``ssd serve --onnx``

Only the convolutions are quantized (``QUANTIZED_OPS``, with the ReLUs and poolings between them), all but the
first, which reads the image: they hold nearly all of the arithmetic, and the softmax and the box decoding stay in
float32, so that boxes keep their precision. Why ONNX Runtime and not PyTorch's PT2E
path, the speed and the accuracy: docs/performance.md ("int8 on the CPU"). int8 pays on CPUs with 8-bit dot
product instructions (x86 VNNI or AMX, Arm dot product); elsewhere it still runs, possibly slower than fp32, and
:func:`int8_dot_product_cpu` lets the tools say so.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ssd.errors import SSDError
from ssd.onnx_format import DEFAULT_OPSET

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "QUANTIZED_OPS", "calibration_files", "int8_dot_product_cpu", "quantize_onnx"]

DEFAULT_CALIBRATION_IMAGES = 200
"""Calibration images by default: a few hundred images of the data the model will see fix the activation ranges."""

QUANTIZED_OPS = ("Conv", "Relu", "MaxPool")
"""ONNX operators computed in int8; everything else (softmax, box decoding) stays float32."""

_CPU_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}  # x86 VNNI / AMX, Arm dot product


def int8_dot_product_cpu() -> bool | None:
    """Whether this CPU has 8-bit dot-product instructions (``None``: cannot tell, e.g. not Linux)."""
    import platform

    if platform.system() == "Darwin":
        return platform.machine() == "arm64"  # every Apple-silicon core has the Arm dot product
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = {f for line in text.splitlines() if line.lower().startswith(("flags", "features")) for f in line.split()}
    return bool(flags & _CPU_FLAGS)


def calibration_files(source: str | os.PathLike, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> list[Path]:
    """Up to ``count`` image files from a dataset index (``.json`` from ``ssd data``) or an image folder: a fixed
    random sample (``seed``), in their listed order, so that a calibration is repeatable."""
    from ssd.data.index import DatasetIndex
    from ssd.detector import iter_image_files

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SSDError(f"--calibration-images {count!r}: give a positive number of images")
    path = Path(source)
    if path.is_dir():
        files = iter_image_files(path)
    elif path.is_file() and path.suffix.lower() == ".json":
        files = [Path(r.file) for r in DatasetIndex.load(path).images]
    elif path.exists():
        raise SSDError(f"--calibrate {source}: give a dataset index (.json, from `ssd data`) or a folder of images")
    else:
        raise SSDError(f"--calibrate {source}: no such file or folder")
    if not files:
        raise SSDError(f"--calibrate {source}: no images to calibrate on")
    pick = np.random.default_rng(seed).choice(len(files), size=min(count, len(files)), replace=False)
    return [files[i] for i in sorted(pick)]


def _require_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as err:
        raise SSDError(f"int8 quantization needs onnxruntime ({err}): pip install onnxruntime") from err
    return quantization


class _CalibrationImages:
    """onnxruntime's calibration reader: batches of prepared images (``prepare(file) -> (3, S, S)``) as
    ``{"images": (N, 3, S, S) float32}``; unreadable files are skipped and counted."""

    def __init__(self, prepare: Callable[[Path], np.ndarray], files: Sequence[Path], batch: int, bar) -> None:
        self.prepare, self.files, self.batch, self.bar = prepare, list(files), batch, bar
        self.position, self.used, self.skipped = 0, 0, []

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self.position < len(self.files):
            chunk = self.files[self.position : self.position + self.batch]
            self.position += len(chunk)
            images = []
            for file in chunk:
                try:
                    images.append(self.prepare(file))
                except SSDError as err:
                    self.skipped.append(str(err))
            self.bar.update(len(chunk))
            if images:
                self.used += len(images)
                return {"images": np.stack(images)}
        return None

    def rewind(self) -> None:  # part of onnxruntime's reader interface
        self.position = 0


def _first_convolution(proto) -> list[str]:
    """The convolution that reads the image (the graph's nodes are in topological order): kept in float32, it costs
    little (3 input channels) and keeps most of the accuracy int8 loses (docs/performance.md)."""
    return [n.name for n in proto.graph.node if n.op_type == "Conv"][:1]


def _quantize_file(q, fp32: Path, ready: Path, int8: Path, reader: _CalibrationImages) -> None:
    """onnxruntime's two steps: graph preparation, then calibration and quantization (its warnings silenced)."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.quant_pre_process(str(fp32), str(ready), skip_symbolic_shape=True)
        q.quantize_static(
            str(ready), str(int8), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=q.CalibrationMethod.MinMax,
            nodes_to_exclude=_first_convolution(onnx.load(str(ready))),
        )  # fmt: skip


def quantize_onnx(
    model,
    path: str | os.PathLike,
    calibration: Sequence[Path],
    *,
    opset: int = DEFAULT_OPSET,
    batch_size: int = 8,
    progress: bool = False,
    source: str = "",
) -> dict[str, Any]:
    """Write an int8 ONNX model of ``model`` (an SSD or a checkpoint path) to ``path``; see the module docstring.

    Args:
        calibration: image files (:func:`calibration_files`); ``source`` names where they came from in the
            file's ``ssd.quantization`` metadata.
        batch_size: calibration images per forward pass.
    Returns:
        :func:`~ssd.export.export_onnx`'s summary plus ``"calibration_images"`` (used) and ``"skipped"`` (messages).
    """
    import onnx

    from ssd.detector import Detector
    from ssd.export import export_onnx
    from ssd.paths import write_atomically
    from ssd.progress import progress as progress_bar

    q = _require_quantization()
    if not calibration:
        raise SSDError("no calibration images")
    with tempfile.TemporaryDirectory(prefix="ssd-quantize-") as tmp:
        fp32, ready, int8 = (Path(tmp) / name for name in ("fp32.onnx", "ready.onnx", "int8.onnx"))
        info = export_onnx(model, fp32, opset=opset, verify=False)
        detector = Detector.from_onnx(fp32, device="cpu")
        with progress_bar(len(calibration), "calibrating", "img", enabled=progress) as bar:
            reader = _CalibrationImages(lambda f: detector.prepare(f).pixels.numpy(), calibration, batch_size, bar)
            try:
                _quantize_file(q, fp32, ready, int8, reader)
            except Exception as err:  # onnxruntime's own errors (a full disk, a graph it refuses): one line
                if reader.used == 0 and reader.skipped:
                    raise SSDError(f"none of the {len(calibration)} calibration images could be read, e.g. "
                                   f"{reader.skipped[0]}") from err  # fmt: skip
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                raise SSDError(f"int8 quantization failed: {type(err).__name__}: {first}") from err
        proto = onnx.load(str(int8))
    record = {"method": "onnxruntime quantize_static, QDQ", "weights": "int8, per output channel",
              "activations": "uint8, MinMax calibration", "ops": list(QUANTIZED_OPS),
              "calibration_images": reader.used, "calibration_source": str(source), "float": "the first convolution"}  # fmt: skip
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ssd.quantization", json.dumps(record)
    data = proto.SerializeToString()
    write_atomically(Path(path), lambda f: f.write(data))
    return {**info, "path": str(path), "calibration_images": reader.used, "skipped": reader.skipped}
