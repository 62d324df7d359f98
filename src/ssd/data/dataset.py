"""Datasets over an index, the batch collation, and deterministic batch sampling.

A sample is addressed by ``(epoch, index)``; its augmentation randomness is seeded from
``(seed, epoch, index)``, so a run repeats exactly whatever the number of loader workers, and a
resumed run continues with the same data order and augmentations.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ssd.data.image import load_image
from ssd.data.index import DatasetIndex
from ssd.data.transforms import Target
from ssd.errors import SSDError


class Sample(NamedTuple):
    image: Tensor  # (3, S, S) float32, RGB in [0, 1]
    boxes_xyxy_rel: Tensor  # (M, 4)
    labels: Tensor  # (M,) int64, 1..K
    difficult: Tensor  # (M,) bool
    index: int  # position in the index (of the image actually used)
    orig_size: tuple[int, int]  # (height, width) of the original image
    failed: tuple[str, ...]  # files that could not be read and were replaced by this sample


class Batch(NamedTuple):
    images: Tensor  # (N, 3, S, S)
    boxes_xyxy_rel: Tensor  # (N, M, 4), zero-padded
    labels: Tensor  # (N, M), 0 pads
    difficult: Tensor  # (N, M) bool
    indices: Tensor  # (N,)
    orig_sizes: Tensor  # (N, 2) (height, width)
    failed: tuple[str, ...]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._replace(
            images=self.images.to(device, non_blocking=non_blocking),
            boxes_xyxy_rel=self.boxes_xyxy_rel.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            difficult=self.difficult.to(device, non_blocking=non_blocking),
        )


def read_image(path: str) -> Tensor:
    """Decode an image file as stored (no EXIF rotation: the frame of its annotations) to uint8 RGB
    (3, H, W); :class:`SSDError` naming the file when it cannot be read."""
    return load_image(path, upright=False)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed, independent of workers and order."""
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + index


class DetectionDataset(Dataset):
    """Images and objects of a :class:`DatasetIndex`, transformed for the model.

    Items are addressed by ``index`` or by ``(epoch, index)``. An image that cannot be decoded is
    replaced by the next readable one (a warning names it; ``Sample.failed`` lists it), so one bad
    file never ends a long run.
    """

    def __init__(
        self,
        index: DatasetIndex,
        transform: Callable[[Tensor, Target, random.Random], tuple[Tensor, Target]],
        seed: int = 0,
        keep_difficult: bool = True,
        max_replacements: int = 10,
    ) -> None:
        self.index = index
        self.transform = transform
        self.seed = seed
        self.keep_difficult = keep_difficult
        self.max_replacements = max_replacements

    def __len__(self) -> int:
        return len(self.index.images)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        j, record, image, target, rng, failed = self.load(key, read_image)
        image, target = self.transform(image, target, rng)
        return Sample(image, target.boxes, target.labels, target.difficult, j, (record.height, record.width), failed)

    def load(self, key: int | tuple[int, int], read: Callable[[str], Any]):
        """The record that sample ``key`` = (epoch, index) uses, ``read`` of its file, its objects and its random
        generator: ``(j, record, read(file), target, rng, failed)``. A file ``read`` refuses (SSDError) is
        replaced by the next readable one of the index, with a warning; ``failed`` lists those replaced. The
        generator is seeded by (seed, epoch, j), so a sample draws the same augmentation in any process."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        failed = []
        for attempt in range(self.max_replacements + 1):
            j = (i + attempt) % len(self)
            record = self.index.images[j]
            try:
                loaded = read(record.file)
                break
            except SSDError as e:
                warnings.warn(f"{e}; using another image in its place", stacklevel=3)
                failed.append(record.file)
        else:
            raise SSDError(f"{self.max_replacements + 1} images in a row could not be read, last: {failed[-1]}")
        target = Target(
            torch.from_numpy(record.boxes_xyxy_abs).float().reshape(-1, 4),
            torch.from_numpy(record.labels).long().reshape(-1),
            torch.from_numpy(record.difficult).bool().reshape(-1),
        )
        if not self.keep_difficult:
            target = target.select(~target.difficult)
        rng = random.Random(sample_seed(self.seed, epoch, j))
        return j, record, loaded, target, rng, tuple(failed)


def pad_objects(samples: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes (N, M, 4), labels (N, M) and difficult flags (N, M) of samples with ``boxes_xyxy_rel``, ``labels``
    and ``difficult``, padded to the batch's largest object count M (label 0 pads)."""
    n = len(samples)
    m = max((len(s.labels) for s in samples), default=0)
    boxes = torch.zeros(n, m, 4)
    labels = torch.zeros(n, m, dtype=torch.int64)
    difficult = torch.zeros(n, m, dtype=torch.bool)
    for k, s in enumerate(samples):
        c = len(s.labels)
        boxes[k, :c] = s.boxes_xyxy_rel
        labels[k, :c] = s.labels
        difficult[k, :c] = s.difficult
    return boxes, labels, difficult


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack images; pad per-image objects to the batch's maximum count (label 0 pads)."""
    n = len(samples)
    boxes, labels, difficult = pad_objects(samples)
    return Batch(
        images=torch.stack([s.image for s in samples]),
        boxes_xyxy_rel=boxes,
        labels=labels,
        difficult=difficult,
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        orig_sizes=torch.tensor([s.orig_size for s in samples], dtype=torch.int64).reshape(n, 2),
        failed=tuple(f for s in samples for f in s.failed),
    )


class TrainBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` keys: a fresh permutation per epoch from ``(seed, epoch)``.

    With ``world_size`` processes, each global batch of ``batch_size * world_size`` images is split
    into contiguous per-rank slices, so the global batch equals a single process's batch. Incomplete
    global batches at the end of an epoch are dropped. ``start(epoch, batch)`` resumes mid-epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < batch_size * world_size:
            raise SSDError(
                f"the dataset has {num_samples} images, fewer than one global batch "
                f"({batch_size} x {world_size}); lower the batch size"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.first_batch = 0, 0

    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def start(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.first_batch = epoch, batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.first_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        global_batch = self.batch_size * self.world_size
        for b in range(self.first_batch, self.batches_per_epoch()):
            start = b * global_batch + self.rank * self.batch_size
            yield [(self.epoch, i) for i in perm[start : start + self.batch_size]]
