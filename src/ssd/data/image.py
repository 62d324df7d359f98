"""Reading image files: every decoder the library uses, with clear errors.

JPEG through torchvision's decoder (libjpeg-turbo: the fastest here, and what ``ssd eval`` reads with), every other
format (PNG, BMP, TIFF, WebP, GIF) and what torchvision refuses (CMYK JPEG) through Pillow. PNG stays with Pillow
because torchvision's libpng binding crashes the process (SIGSEGV) on a PNG whose compressed data is damaged
(torchvision 0.29: ``libpng error: IDAT: incorrect data check``), which an upload to ``ssd serve`` could exploit;
Pillow refuses the same file with an error. 16-bit images are scaled to 8 bits, greyscale and palette images
expanded to RGB, alpha dropped. Every failure is an :class:`~ssd.errors.SSDError` naming the file and the reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssd.errors import SSDError


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _float_to_uint8(x: Tensor, source: str) -> Tensor:
    if x.numel() == 0:
        raise SSDError(f"{source}: empty image (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise SSDError(f"{source}: the float image holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise SSDError(
            f"{source}: float images must be in [0, 1], got [{lo:.3g}, {hi:.3g}] "
            "(divide 0-255 values by 255, or pass uint8)"
        )
    return (x.float() * 255.0).round().to(torch.uint8)


def _array_to_tensor(arr: np.ndarray, source: str = "<array>") -> Tensor:
    """H x W, H x W x 1, H x W x 3 or H x W x 4 (alpha dropped); uint8, uint16, bool or float in [0, 1]."""
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, :3] if arr.shape[2] != 1 else arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise SSDError(f"{source}: an array image must be H x W x 3 (RGB) or H x W (grey), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        hwc = _float_to_uint8(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), source)
        return _check_size(hwc.permute(2, 0, 1).contiguous(), source)
    else:
        raise SSDError(f"{source}: array images must be uint8, uint16 or float in [0, 1], not {arr.dtype}")
    # H x W x 3 -> 3 x H x W: numpy's transposing copy, faster than torch's permute().contiguous() for uint8
    return _check_size(torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C")), source)  # always a copy


def _pil_to_tensor(im) -> Tensor:
    """A PIL image (any mode) -> uint8 RGB (3, H, W); 16-bit and 32-bit integer modes scaled by 1/257."""
    if im.mode in _SIXTEEN_BIT_MODES:  # integer arithmetic (float64 took 8 bytes a pixel): round(v / 257), clipped
        arr = np.asarray(im)
        wide = arr.astype(np.uint32 if arr.dtype.kind == "u" else np.int64)
        arr = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)
    else:
        arr = np.asarray(im.convert("RGB"))
    return _array_to_tensor(arr, "<PIL image>")


def load_image(path: str | os.PathLike, upright: bool = True) -> Tensor:
    """Decode an image file to uint8 RGB (3, H, W), upright (EXIF orientation applied) unless ``upright`` is False.

    JPEG and PNG (8 or 16 bits, greyscale, palette, RGBA: alpha dropped), CMYK JPEG, and whatever else
    Pillow reads (BMP, TIFF, WebP, GIF: first frame). Datasets read images as stored (``upright=False``),
    the frame their annotations and recorded sizes use; user images are turned upright. Raises
    :class:`SSDError` saying why a file cannot be read (missing, a folder, empty, not an image,
    truncated, too large: over twice Pillow's ``Image.MAX_IMAGE_PIXELS``, its decompression-bomb
    error threshold, about 179 megapixels by default).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SSDError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise SSDError(f"{p}: is a folder, not an image") from None
    except PermissionError:
        raise SSDError(f"{p}: permission denied") from None
    except OSError as e:
        raise SSDError(f"{p}: cannot read ({e.strerror or e})") from e
    return decode_image_bytes(data, str(p), upright)


def decode_image_bytes(data: bytes, source: str = "image", upright: bool = True) -> Tensor:
    """Decode an image held in memory (an upload, say) exactly as :func:`load_image` decodes a file of those
    bytes; ``source`` names it in error messages."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = source
    if not data:
        raise SSDError(f"{p}: empty file (0 bytes)")

    # Pillow reads the header only: the format, the size, and the decompression-bomb check.
    pil_error: Exception | None = None
    header_format = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                header_format = im.format
    except Image.DecompressionBombError as e:
        raise SSDError(f"{p}: image too large ({e})") from e
    except UnidentifiedImageError as e:
        pil_error = e
    except Exception as e:  # a header Pillow cannot parse
        pil_error = e
    if header_format == "JPEG":
        image = _decode_jpeg_torchvision(data, upright)
        if image is not None:
            return _check_size(image, p)
    if pil_error is not None:
        reason = "not an image, or a format Pillow does not read"
        raise SSDError(f"{p}: {reason} ({type(pil_error).__name__})") from pil_error
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()  # every pixel now: a damaged file fails here, never inside the EXIF step's fallback below
            oriented = im
            if upright:
                try:
                    oriented = ImageOps.exif_transpose(im)
                except Exception:  # a malformed EXIF block: keep the stored orientation
                    oriented = im
            image = _pil_to_tensor(oriented)
        return _check_size(image, p)
    except SSDError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = " (truncated?)" if "truncated" not in msg.lower() and isinstance(e, OSError) else ""
        raise SSDError(f"{p}: cannot decode image{hint}: {type(e).__name__}: {msg[:200]}") from e


def _decode_jpeg_torchvision(data: bytes, upright: bool) -> Tensor | None:
    """A JPEG through torchvision's libjpeg-turbo binding, uint8 RGB; None where it refuses the file (CMYK, damaged:
    Pillow then decodes it or says why). Never given other formats (see the module docstring)."""
    try:
        from torchvision.io import ImageReadMode, decode_image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                apply_exif_orientation=upright,
            )  # fmt: skip
    except Exception:
        return None


def _check_size(image: Tensor, source: str) -> Tensor:
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise SSDError(f"{source}: empty image (shape {tuple(image.shape)})")
    return image
