"""Images as model inputs: a folder of PNG/JPEG files, or the natural photographs bundled in a package.

An image-to-image generator (super-resolution, pix2pix, CycleGAN, style transfer) calibrated,
checked or distilled on Gaussian noise learns and reports on inputs unlike its users'. So an
input shaped like an image (``[N, 1 or 3, H, W]``, H and W at least ``MIN_SIDE``) whose prior
was not chosen explicitly is drawn from natural photographs (``images:LO..HI``, see
``gencompress.inputs``), and ``--data`` takes a folder of images as well as an ``.npz``.

Natural set: the two photographs scikit-learn ships inside its wheel (``sklearn/datasets/images``:
china.jpg, flower.jpg, 427x640 RGB), read with Pillow; no download. scikit-learn is already a
dependency of the train/dev extras. scikit-image's wheel holds more photographs (astronaut,
chelsea, coffee, motorcycle, rocket) but pulls networkx, imageio, tifffile and lazy_loader in.
Each draw is a random crop (side between the input's and the photo's, so several scales),
flipped at random, resized to the input with Pillow's box filter: thousands of distinct patches.

Folder images are center-cropped to the input's aspect ratio and shrunk to its size (never
enlarged: an image smaller than the input is refused), then mapped from 0..255 to LO..HI.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from gencompress.errors import GencompressError

MIN_SIDE = 8  # smaller "images" are more likely feature maps or latents
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NATURAL_SET = "scikit-learn's sample photographs (china.jpg, flower.jpg), random crops"
_MODES = {3: ("RGB",), 1: ("L",)}
_MODE_NAMES = {3: "RGB", 1: "grayscale (L)"}


def is_image_shape(shape) -> bool:
    """``[N, C, H, W]`` with C 1 or 3 and H, W >= MIN_SIDE."""
    return len(shape) == 4 and shape[1] in (1, 3) and shape[2] >= MIN_SIDE and shape[3] >= MIN_SIDE


def _image_module():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise GencompressError("reading images needs Pillow: pip install pillow") from None
    return Image, UnidentifiedImageError


def _to_range(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    return (pixels.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)).astype(np.float32)


def _fit(img, height: int, width: int):
    """Center crop to the target's aspect ratio, then shrink to height x width (box filter)."""
    Image, _ = _image_module()
    w, h = img.size
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.resize((width, height), Image.Resampling.BOX, box=(left, top, left + cw, top + ch))


def image_files(folder) -> list[Path]:
    """The PNG/JPEG files of ``folder`` (not recursive), sorted by name; one-line errors otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GencompressError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise GencompressError(f"{folder}: no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)})")
    return files


@contextmanager
def _bomb_is_an_error(Image):
    """Pillow's DecompressionBombWarning raised (it warns on stderr and decodes up to twice its pixel
    limit, then raises DecompressionBombError): every image over the limit is one refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def load_image_folder(folder, shape, low: float, high: float, budget_bytes: int, name: str) -> np.ndarray:
    """``[N, C, H, W]`` float32 in ``[low, high]`` from every image of ``folder``, for input ``name`` of ``shape``."""
    Image, Unidentified = _image_module()
    files = image_files(folder)
    channels, height, width = shape[1:]
    need = len(files) * channels * height * width * 4
    if need > budget_bytes:
        raise GencompressError(f"{folder}: {len(files)} images of {height}x{width} need {need / 2**20:,.0f} MiB, above the "
                               f"{budget_bytes / 2**20:,.0f} MiB sampling budget (GENCOMPRESS_SAMPLE_BUDGET_MB)")
    out = np.empty((len(files), channels, height, width), np.float32)
    for i, path in enumerate(files):
        where = f"{path} (input {name!r})"
        try:
            with _bomb_is_an_error(Image), Image.open(path) as img:
                if img.format not in ("PNG", "JPEG"):
                    raise GencompressError(f"{where}: a {img.format} file, expected PNG or JPEG")
                if img.mode not in _MODES[channels]:
                    raise GencompressError(f"{where}: {img.mode} image, the input takes {_MODE_NAMES[channels]} ({channels} channel{'s' * (channels > 1)})")
                if img.width < width or img.height < height:
                    raise GencompressError(f"{where}: {img.width}x{img.height} pixels, smaller than the input's {width}x{height}")
                img.load()
                pixels = np.asarray(_fit(img, height, width))
        except GencompressError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise GencompressError(f"{where}: more than {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); resize it") from None
        except (Unidentified, OSError, ValueError, SyntaxError) as e:
            raise GencompressError(f"{where}: not a readable PNG/JPEG image ({type(e).__name__})") from None
        out[i] = _to_range(pixels.reshape(height, width, channels).transpose(2, 0, 1), low, high)
    return out


@lru_cache(maxsize=2)
def _natural_photos(channels: int) -> tuple:
    """The bundled photographs as uint8 arrays ``[H, W, C]``."""
    Image, _ = _image_module()
    spec = find_spec("sklearn")  # located, not imported: importing scikit-learn takes seconds
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "images" if spec and spec.submodule_search_locations else None
    files = sorted(folder.glob("*.jpg")) if folder and folder.is_dir() else []
    if not files:
        raise GencompressError("natural images for image inputs come from scikit-learn's sample photographs: "
                               "pip install scikit-learn, or give --data FOLDER/FILE.npz, or ask for noise with a normal prior")
    photos = []
    for path in files:
        with Image.open(path) as img:
            photos.append(np.asarray(img.convert("RGB" if channels == 3 else "L")).reshape(img.height, img.width, channels))
    return tuple(photos)


def natural_patches(shape, n: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """``n`` seeded random crops of the bundled photographs, as ``[n, C, H, W]`` float32 in ``[low, high]``."""
    Image, _ = _image_module()
    channels, height, width = shape[1:]
    photos = _natural_photos(channels)
    out = np.empty((n, channels, height, width), np.float32)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        largest = min(ph / height, pw / width)  # crops from the input's size (1x) up to the whole photo
        scale = float(np.exp(rng.uniform(0.0, np.log(max(largest, 1.0)))))
        ch, cw = min(ph, max(1, round(height * scale))), min(pw, max(1, round(width * scale)))
        top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop = photo[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.ascontiguousarray(crop.squeeze(-1) if channels == 1 else crop))
        pixels = np.asarray(img.resize((width, height), Image.Resampling.BOX)).reshape(height, width, channels)
        out[i] = _to_range(pixels.transpose(2, 0, 1), low, high)
    return out


def is_folder(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).is_dir()
