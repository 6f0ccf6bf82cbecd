"""Image files in and out: 16-bit images read at their full range, files named when unreadable,
outputs written whole or not at all.

PIL's `convert("RGB")` clips a 16-bit image (mode I;16 or I, common for depth maps) to 255, so
it turned all white; here such images are scaled to 8 bits first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
PathLike = Union[str, "os.PathLike[str]"]


class ImageFileError(ValueError):
    """An image file that cannot be read or written; the message names it."""


def gray_to_rgb(array: np.ndarray) -> np.ndarray:
    """An HxW (single-channel) array as HxWx3; an HxWx3 one unchanged."""
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def to_rgb8(image: Image.Image) -> np.ndarray:
    """A PIL image as uint8 HxWx3: 16-bit gray scaled by 255/65535, float (F) read as [0, 1]."""
    if image.mode in HIGH_BIT_MODES:
        gray = np.round(np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8)
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError("a float (mode F) image holds NaN or infinite values")
        gray = np.round(array.clip(0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        return np.asarray(image.convert("RGB"))
    return gray_to_rgb(gray)


def read_image(path: PathLike, what: str = "image") -> Image.Image:
    """The image at `path`, decoded and as 8-bit RGB (16-bit scaled); `what` names it in errors
    (a flag, an input name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such image file: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return Image.fromarray(to_rgb8(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageFileError(f"{what}: {path} cannot be read as an image ({err})") from None


def image_size(path: PathLike, what: str = "image") -> tuple:
    """(width, height) of the image at `path` from its header, without decoding it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such image file: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageFileError(f"{what}: {path} cannot be read as an image ({err})") from None


def check_output_path(path: PathLike, what: str = "--out") -> Path:
    """Fail now, not after the work, if an image cannot be written at `path`: a known image
    extension, and a writable folder (the nearest existing one, where the folder is still to be made)."""
    path = Path(path)
    extensions = Image.registered_extensions()
    if path.suffix.lower() not in extensions or extensions[path.suffix.lower()] not in Image.SAVE:
        raise ImageFileError(
            f"{what}: {path}: {path.suffix or 'no extension'} is not an image format PIL writes; "
            f"use .png (lossless) or .jpg, .webp"
        )
    if path.is_dir():
        raise ImageFileError(f"{what}: {path} is a folder; expected an image file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ImageFileError(f"{what}: {path}: cannot write in {folder}")
    return path


def save_image_atomic(image: Image.Image, path: PathLike) -> Path:
    """Save `image` through a temporary file beside `path` and a rename: `path` is never left
    half written, and an existing file there is only replaced by a whole one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_format = Image.registered_extensions()[path.suffix.lower()]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=image_format)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
