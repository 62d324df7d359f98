"""The training input pipeline with JPEG decoding and the pixel work on the training device (a GPU).

Why: decoding a full-size VOC JPEG and augmenting it costs a CPU core about 12 ms, so the regular loader
(:class:`~ssd.data.dataset.DetectionDataset` in DataLoader workers) tops out near 80 images/s per core,
short of what one GPU trains on. Here the workers do only the cheap part, and the GPU the heavy one.

Data flow:

1. workers (:class:`EncodedDetectionDataset`): read the file's bytes, read the image size from the header
   (Pillow parses the header only), draw the augmentation (:meth:`TrainTransform.sample_params
   <ssd.data.transforms.TrainTransform.sample_params>`, from the boxes and the size) and transform the boxes
   (:meth:`~ssd.data.transforms.TrainTransform.apply_target`);
2. workers (:func:`collate_encoded`): pack a batch into a few tensors (one byte buffer, one window per image,
   the padded boxes), because a DataLoader ships every tensor through its own shared-memory segment and
   hundreds of small ones per batch cap the loader near 1000 images/s by themselves;
3. main process (:func:`render_batch`): one ``torchvision.io.decode_jpeg(list, device=device)`` call for
   the batch's JPEGs (nvJPEG on CUDA, libjpeg-turbo on the CPU), then per image
   :meth:`~ssd.data.transforms.TrainTransform.render` on the device (photometric distortions, then the one
   geometric resampling), stacked into the :class:`~ssd.data.dataset.Batch` the regular loader gives.

What is identical to the CPU path: the random draws and the targets, bit for bit (same code, same per-sample
seed from ``(seed, epoch, index)``, computed on the CPU in the workers), hence the data order and the boxes;
on the CPU the images too (``decode_jpeg`` and ``decode_image``, the CPU path's decoder, run the same libjpeg-turbo
decoder; tests/test_gpu_pipeline.py checks the equality).
What is not: on a GPU, nvJPEG's IDCT and chroma upsampling, the float resize kernel (the CPU resizes uint8
natively) and the float colour operations may round differently, a few grey levels here and there; the
parameters being the same, the geometry and the boxes are not affected.

Files that are not plain JPEGs (PNG, CMYK JPEG, any header Pillow cannot parse, a JPEG that does not end with
its end-of-image marker, which is how a truncated file looks) are decoded on the CPU in the worker, as the
regular loader does, so nothing is lost; files that cannot be read at all are replaced by the next readable
image of the index, as in :class:`~ssd.data.dataset.DetectionDataset`. A JPEG that passes those checks and
still fails to decode in the main process (rare: a corrupt scan) is replaced by another image of its batch,
with a warning, and listed in ``Batch.failed``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from ssd.data.dataset import Batch, DetectionDataset, pad_objects, read_image
from ssd.data.image import decode_image_bytes
from ssd.data.index import DatasetIndex
from ssd.data.transforms import PhotometricParams, TrainParams, TrainTransform
from ssd.errors import SSDError

_JPEG_MODES = ("RGB", "L")
"""Pillow modes of the JPEGs sent to ``decode_jpeg`` (YCbCr or RGB, and greyscale); CMYK goes to the CPU."""


class EncodedSample(NamedTuple):
    """One sample from the workers: the image still encoded (or decoded, for what is not a plain JPEG), the drawn
    augmentation, and the already transformed objects."""

    data: Tensor  # uint8: the JPEG file's bytes (1-D) when `encoded`, else the decoded image (3, H, W)
    encoded: bool
    image_hw: tuple[int, int]  # (height, width) of the stored image, the frame `params` were drawn in
    params: TrainParams
    boxes_xyxy_rel: Tensor  # (M, 4), after the augmentation
    labels: Tensor  # (M,) int64, 1..K
    difficult: Tensor  # (M,) bool
    index: int  # position in the index (of the image actually used)
    orig_size: tuple[int, int]  # (height, width) recorded in the index
    failed: tuple[str, ...]  # files that could not be read and were replaced by this sample
    file: str  # the image file, named by a failure in the main process


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG that the device decoder can take as it is stored, else ``None``.

    Only the header is parsed. The size is the stored one, without EXIF rotation, as
    ``load_image(path, upright=False)`` decodes it. ``None`` for other formats, CMYK JPEGs, headers Pillow
    cannot parse or too large images (the CPU decoder then decodes them or says why), and for data that does
    not end with the end-of-image marker (FF D9): a truncated file, whose failure the worker must see to replace
    it as the regular loader does (a complete file with bytes after the marker only costs a CPU decode).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, mode, (width, height) = im.format, im.mode, im.size
    except Exception:  # not an image, a header Pillow cannot parse, a decompression bomb
        return None
    if fmt != "JPEG" or mode not in _JPEG_MODES or not data.endswith(b"\xff\xd9") or width < 1 or height < 1:
        return None
    return height, width


def read_encoded(path: str) -> tuple[Tensor, bool, tuple[int, int]]:
    """``(data, encoded, (height, width))`` of an image file: a plain JPEG's bytes as a 1-D uint8 tensor with
    ``encoded`` True, anything else decoded here on the CPU exactly as :func:`~ssd.data.dataset.read_image`
    does. Raises the :class:`SSDError` that ``read_image`` raises for a file that cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        image = read_image(path)  # raises the SSDError that says why (missing, a folder, permission...)
        return image, False, (image.shape[1], image.shape[2])
    hw = jpeg_size(data)
    if hw is None:
        image = decode_image_bytes(data, str(Path(path)), upright=False)
        return image, False, (image.shape[1], image.shape[2])
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), True, hw


class EncodedDetectionDataset(DetectionDataset):
    """:class:`DetectionDataset` for :func:`render_batch`: items are :class:`EncodedSample`.

    Same addressing (``index`` or ``(epoch, index)``), same per-sample seed, same replacement of unreadable
    files: the same key draws the same parameters and gives the same objects as ``DetectionDataset`` with the
    same transform. The transform must split into ``sample_params``, ``apply_target`` and ``render``, as
    :class:`~ssd.data.transforms.TrainTransform` does.
    """

    def __init__(
        self,
        index: DatasetIndex,
        transform: TrainTransform,
        seed: int = 0,
        keep_difficult: bool = True,
        max_replacements: int = 10,
    ) -> None:
        missing = [m for m in ("sample_params", "apply_target", "render") if not callable(getattr(transform, m, None))]
        if missing:
            raise SSDError(
                f"the GPU input pipeline needs a transform with sample_params, apply_target and render "
                f"(a TrainTransform); {type(transform).__name__} lacks {', '.join(missing)}"
            )
        super().__init__(index, transform, seed=seed, keep_difficult=keep_difficult, max_replacements=max_replacements)

    def __getitem__(self, key: int | tuple[int, int]) -> EncodedSample:
        j, record, (data, encoded, (height, width)), target, rng, failed = self.load(key, read_encoded)
        params = self.transform.sample_params(height, width, target, rng)
        target = self.transform.apply_target(target, params)
        return EncodedSample(data, encoded, (height, width), params, target.boxes, target.labels, target.difficult, j,
                             (record.height, record.width), failed, record.file)  # fmt: skip


class EncodedBatch(NamedTuple):
    """A batch of :class:`EncodedSample` in few tensors (see the module docstring), for :func:`render_batch`."""

    payload: Tensor  # uint8 (total,): every sample's data (bytes or decoded pixels), flattened, back to back
    spans: tuple[tuple[int, int], ...]  # (offset, length) of each sample's data in `payload`
    encoded: tuple[bool, ...]
    image_hw: tuple[tuple[int, int], ...]
    photometric: tuple[PhotometricParams | None, ...]
    zoomed: tuple[bool, ...]
    canvas_hw: tuple[tuple[int, int], ...]
    image_tl: tuple[tuple[int, int], ...]
    windows: Tensor  # (N, 4) float32, each sample's window
    flips: tuple[bool, ...]
    boxes_xyxy_rel: Tensor  # (N, M, 4), zero-padded
    labels: Tensor  # (N, M), 0 pads
    difficult: Tensor  # (N, M) bool
    indices: Tensor  # (N,)
    orig_sizes: Tensor  # (N, 2) (height, width)
    failed: tuple[str, ...]
    files: tuple[str, ...]

    @property
    def size(self) -> int:
        """The number of samples (``len()`` of a NamedTuple counts its fields)."""
        return len(self.spans)

    def data(self, k: int) -> Tensor:
        """Sample ``k``'s data: the JPEG's bytes (1-D), or its decoded image (3, H, W)."""
        offset, length = self.spans[k]
        flat = self.payload[offset : offset + length]
        return flat if self.encoded[k] else flat.view(3, *self.image_hw[k])

    def params(self, k: int) -> TrainParams:
        """Sample ``k``'s parameters as :meth:`TrainTransform.render` needs them. ``keep`` (which objects the crop
        kept) and ``crop_draws`` are not carried: the workers have already applied them to the boxes."""
        return TrainParams(self.photometric[k], self.zoomed[k], self.canvas_hw[k], self.image_tl[k], self.windows[k],
                           None, self.flips[k])  # fmt: skip


def collate_encoded(samples: Sequence[EncodedSample]) -> EncodedBatch:
    """Pack samples into an :class:`EncodedBatch`; objects padded as :func:`~ssd.data.dataset.collate` pads them."""
    if not samples:
        raise SSDError("cannot collate an empty batch")
    n = len(samples)
    flat = [s.data.reshape(-1) for s in samples]
    offsets = [0]
    for f in flat[:-1]:
        offsets.append(offsets[-1] + f.numel())
    boxes, labels, difficult = pad_objects(samples)
    return EncodedBatch(
        payload=torch.cat(flat),
        spans=tuple((o, f.numel()) for o, f in zip(offsets, flat)),
        encoded=tuple(s.encoded for s in samples),
        image_hw=tuple(s.image_hw for s in samples),
        photometric=tuple(s.params.photometric for s in samples),
        zoomed=tuple(s.params.zoomed for s in samples),
        canvas_hw=tuple(s.params.canvas_hw for s in samples),
        image_tl=tuple(s.params.image_tl for s in samples),
        windows=torch.stack([s.params.window.float().reshape(4) for s in samples]),
        flips=tuple(s.params.flip for s in samples),
        boxes_xyxy_rel=boxes,
        labels=labels,
        difficult=difficult,
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        orig_sizes=torch.tensor([s.orig_size for s in samples], dtype=torch.int64).reshape(n, 2),
        failed=tuple(f for s in samples for f in s.failed),
        files=tuple(s.file for s in samples),
    )


def _decode_jpegs(datas: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """Decode JPEG bytes on ``device``: one call for all; when it fails, one call per image to find the culprits
    (``None``). On CUDA through :func:`_isolated_decode`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data):
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False)

    run = _isolated_decode if device.type == "cuda" else (lambda fn, arg, _device: fn(arg))
    try:
        return list(run(decode, datas, device))
    except RuntimeError:
        pass
    out: list[Tensor | None] = []
    for d in datas:
        try:
            out.append(run(decode, d, device))
        except RuntimeError:
            out.append(None)
    return out


_DECODE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _isolated_decode(decode, data, device: torch.device):
    """``decode(data)`` (torchvision's CUDA ``decode_jpeg``) with its outputs drawn from a stream of their own.

    Why: torchvision allocates the decoded images from the caller's stream's memory pool and nvJPEG writes them on
    a private stream that is not ordered after the caller's queued work (pytorch/vision#9606). A block freed a
    moment ago by the training step, still read by its queued kernels, can be handed to the decoder and
    overwritten: wrong numbers far from the decoder (seen here as garbage in a training run's counters). Here the
    outputs come from the pool of a dedicated stream, and each is marked as used by the caller's stream, so the
    allocator gives its memory out again only after the caller's kernels that read it have run. No host sync."""
    stream = _DECODE_STREAMS.get(device)
    if stream is None:
        stream = _DECODE_STREAMS[device] = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)
    with torch.cuda.stream(stream):
        out = decode(data)
    current.wait_stream(stream)
    for image in out if isinstance(out, list) else [out]:
        image.record_stream(current)
    return out


def decode_batch(batch: EncodedBatch, device: torch.device | str) -> list[Tensor | None]:
    """Each sample's uint8 image (3, H, W) on ``device``, ``None`` for one that cannot be decoded at its
    recorded size (see :func:`decode_on_device`)."""
    datas = [batch.data(k) for k in range(batch.size)]
    return decode_on_device(datas, batch.encoded, batch.image_hw, batch.files, device)


def decode_on_device(
    datas: Sequence[Tensor], encoded: Sequence[bool], image_hw: Sequence[tuple[int, int]], files: Sequence[str],
    device: torch.device | str,
) -> list[Tensor | None]:
    """Images on ``device`` from what :func:`read_encoded` gave: JPEG bytes (``encoded``) decoded there in one call,
    already decoded images (3, H, W) copied there. A JPEG the device decoder refuses is retried with the CPU
    decoders (:func:`~ssd.data.image.decode_image_bytes`); ``None`` where that fails
    too or the result is not of the size ``image_hw`` the header gave."""
    device = torch.device(device)
    images: list[Tensor | None] = [None] * len(datas)
    jpegs = [k for k in range(len(datas)) if encoded[k]]
    for k in range(len(datas)):
        if not encoded[k]:
            images[k] = datas[k].to(device, non_blocking=True)
    decoded = _decode_jpegs([datas[k] for k in jpegs], device) if jpegs else []
    for k, image in zip(jpegs, decoded):
        expected = (3, *image_hw[k])
        if image is None or tuple(image.shape) != expected:
            try:
                cpu = decode_image_bytes(datas[k].numpy().tobytes(), files[k], upright=False)
                image = cpu.to(device) if tuple(cpu.shape) == expected else None
            except SSDError:
                image = None
        images[k] = image
    return images


def render_batch(batch: EncodedBatch, transform: TrainTransform, device: torch.device | str) -> Batch:
    """Decode and augment a batch on ``device``: the :class:`~ssd.data.dataset.Batch` the regular loader gives,
    images (N, 3, S, S) float32 on ``device``, objects on the CPU (the training loop moves them).

    A sample that cannot be decoded is replaced by the next decodable sample of the batch (its image and
    objects), with a warning, and its file added to ``failed``, so the batch keeps its size.
    """
    device = torch.device(device)
    images = decode_batch(batch, device)
    good = [k for k, image in enumerate(images) if image is not None]
    if not good:
        raise SSDError(f"no image of the batch could be decoded: {', '.join(batch.files)}")
    rendered = {k: transform.render(images[k], batch.params(k)) for k in good}
    source = list(range(batch.size))
    failed = list(batch.failed)
    for k in range(batch.size):
        if images[k] is None:
            later = [g for g in good if g > k]
            source[k] = later[0] if later else good[0]
            warnings.warn(f"{batch.files[k]}: cannot decode image; using {batch.files[source[k]]} in its place", stacklevel=2)
            failed.append(batch.files[k])
    pick = torch.tensor(source, dtype=torch.int64)
    return Batch(
        images=torch.stack([rendered[s] for s in source]),
        boxes_xyxy_rel=batch.boxes_xyxy_rel[pick],
        labels=batch.labels[pick],
        difficult=batch.difficult[pick],
        indices=batch.indices[pick],
        orig_sizes=batch.orig_sizes[pick],
        failed=tuple(failed),
    )


def render_batches(loader: Iterable[EncodedBatch], transform: TrainTransform, device: torch.device | str) -> Iterator[Batch]:
    """Batches of a DataLoader over :class:`EncodedDetectionDataset` (with ``collate_fn=collate_encoded``),
    decoded and augmented on ``device``: a drop-in for the regular loader in a training loop."""
    for batch in loader:
        yield render_batch(batch, transform, device)
