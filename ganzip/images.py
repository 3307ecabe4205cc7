"""Image files in and out: the one place that knows about file formats, modes and the [-1, 1] range.

Generators from the CycleGAN code base read and write RGB in [-1, 1]; real folders hold JPEGs, PNGs in gray,
RGBA, palette or 16-bit modes, and stray non-image files. Everything is converted here so nothing else has to.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from ganzip.atomic import write_bytes
from ganzip.errors import UserError, missing_folder, setting

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def list_images(folder: str | os.PathLike, what: str = "image folder") -> list[Path]:
    """Sorted image files in `folder` (not recursive); anything else but subfolders is skipped with one warning.

    Hidden files (.DS_Store, macOS ._photo.jpg forks) and broken symlinks are skipped too, and counted in the
    same warning, so a folder that yields fewer images than it seems to hold always says why.
    """
    folder = Path(folder)
    if (missing := missing_folder(folder, what)) is not None:
        raise UserError(missing)
    if not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder of images")
    entries = sorted(folder.iterdir())
    broken = [p.name for p in entries if p.is_symlink() and not p.exists()]
    hidden = [p.name for p in entries if p.name.startswith(".") and p.name not in broken and not p.is_dir()]
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    other = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    _warn_skipped(folder, other, hidden, broken)
    if not images:
        raise UserError(f"{what} {folder} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def _warn_skipped(folder: Path, other: list[str], hidden: list[str], broken: list[str]) -> None:
    parts = [(other, "non-image"), (hidden, "hidden"), (broken, "broken symlink")]
    parts = [(names, kind) for names, kind in parts if names]
    if not parts:
        return
    total = sum(len(names) for names, _ in parts)
    if len(parts) == 1:
        head = f"skipped {total} {parts[0][1]} file(s) in {folder}"
    else:
        head = f"skipped {total} file(s) in {folder} (" + ", ".join(f"{len(n)} {k}" for n, k in parts) + ")"
    shown = [name for names, _ in parts for name in names]
    warnings.warn(f"{head}: {', '.join(shown[:3])}" + (" ..." if total > 3 else ""), stacklevel=3)


def spaced(paths: list[Path], n: int) -> list[Path]:
    """At most `n` files evenly spread over the sorted list: representative, and the same for every run."""
    if n >= len(paths):
        return list(paths)
    return [paths[i * len(paths) // n] for i in range(n)]


def holds_images(folder: str | os.PathLike) -> bool:
    """True for a folder with image files directly in it: the inputs themselves, not a dataset root."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any supported image as 8-bit RGB (gray, RGBA, palette and 16-bit images are converted), upright.

    Cameras store photos as the sensor saw them and record the rotation in the EXIF orientation tag; image
    viewers apply it, so ganzip does too, or phone photos would be translated lying on their side.
    """
    with reading(path), _open(path) as img:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))


def check_header(path: str | os.PathLike, what: str = "image") -> None:
    """Open the file's header only, without decoding: cheap enough to check every image before a long run starts,
    and the header is where PIL's decompression-bomb limit is met."""
    with reading(path, what), _open(path):
        pass


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "image") -> Iterator[None]:
    """PIL's and the file system's errors while reading `path` as one line naming it (`what`: "input image")."""
    try:
        yield
    except Image.DecompressionBombError as e:
        raise UserError(f"cannot read {what} {path}: {e}; shrink the image first") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read {what} {path}: {e}; remove or replace the file") from None


def _open(path: str | os.PathLike) -> Image.Image:
    """Image.open, with PIL's decompression-bomb warning (a source-line dump naming no file) as one line of ganzip's
    that names the image: it is large enough to cost real memory, not so large that PIL refuses it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        img = Image.open(path)
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(f"{path} is {img.width}x{img.height}, more pixels than PIL's safety limit "
                          f"({Image.MAX_IMAGE_PIXELS:,}); decoding it takes a lot of memory, shrink it if it is "
                          f"larger than it should be", stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # I;16 says its depth; plain I (32-bit) does not, so values above 255 are what mark it as 16-bit.
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1], as the upstream generators expect."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def to_pil(t: torch.Tensor) -> Image.Image:
    """Tensor (3, H, W) in [-1, 1] -> PIL RGB, rounding like the upstream `tensor2im`."""
    arr = ((t.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")


def save_png(img: Image.Image | torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a PNG atomically."""
    if torch.is_tensor(img):
        img = to_pil(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return write_bytes(buf.getvalue(), path)


def grid(rows: Sequence[Sequence[torch.Tensor]], pad: int = 2, labels: Sequence[str] | None = None) -> torch.Tensor:
    """Tile images (each (3, H, W) in [-1, 1], all the same size) into one image, rows x columns, white gaps; with
    `labels`, a strip above names each column, so a grid read away from the command that made it says which
    column is which model."""
    h, w = rows[0][0].shape[-2:]
    n_cols = max(len(r) for r in rows)
    out = torch.ones(3, len(rows) * (h + pad) - pad, n_cols * (w + pad) - pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[:, i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = img.detach().float().cpu()
    if labels:
        out = torch.cat([_label_strip(labels, w, pad, out.shape[-1]), out], dim=1)
    return out


LABEL_HEIGHT = 14  # PIL's built-in bitmap font is 11 px high


def _label_strip(labels: Sequence[str], cell: int, pad: int, width: int) -> torch.Tensor:
    """A white strip with each label at the left of its column, shortened with '...' to fit the column."""
    strip = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for j, label in enumerate(labels):
        text = label
        while len(text) > 1 and draw.textlength(text, font=font) > cell - 4:
            text = text[:-4] + "..." if len(text) > 4 else text[:-1]
        draw.text((j * (cell + pad) + 2, 1), text, fill="black", font=font)
    return to_tensor(strip)


def _resized(img: Image.Image, size: int | None) -> Image.Image:
    return img if size is None or img.size == (size, size) else img.resize((size, size), Image.BICUBIC)


def load_input(path: str | os.PathLike, size: int | None = None, direction: str | None = None) -> Image.Image:
    """An image as a generator reads it, as upstream's test script does (resize, no crop): the input half of an
    A|B pair when `direction` is given, resized (bicubic) to size x size when `size` is."""
    img = load_rgb(path)
    if direction:
        img = split_aligned(img, direction, str(path))[0]
    return _resized(img, size)


def load_pair(path: str | os.PathLike, size: int | None = None, direction: str = "AtoB"
              ) -> tuple[Image.Image, Image.Image]:
    """The (input, target) halves of an A|B pair for `direction`, each resized as `load_input` does."""
    a, b = split_aligned(load_rgb(path), direction, str(path))
    return _resized(a, size), _resized(b, size)


def load_batch(paths: Iterable[str | os.PathLike], size: int | None = None) -> torch.Tensor:
    """Load images as one batch (N, 3, size, size) in [-1, 1], resized with bicubic when `size` is given."""
    return torch.stack([to_tensor(load_input(p, size)) for p in paths])


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header, upright as `load_rgb` turns it, without decoding the pixels."""
    with reading(path), _open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)  # EXIF orientation 5-8 swap the sides
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def is_pair_size(width: int, height: int) -> bool:
    """An A|B pair is two equal halves side by side: exactly twice as wide as high."""
    return width == 2 * height


def split_aligned(img: Image.Image, direction: str = "AtoB", name: str = "image") -> tuple[Image.Image, Image.Image]:
    """Split a pix2pix A|B side-by-side image into (input, target) for the given direction; an image that is not
    twice as wide as high is not a pair, and is refused rather than cut into two unequal, stretched halves."""
    if direction not in ("AtoB", "BtoA"):
        raise UserError(f"{setting('direction')} must be AtoB or BtoA, not {direction!r}")
    w, h = img.size
    if not is_pair_size(w, h):
        raise UserError(f"{name} is {w}x{h}, not an A|B pair (those are twice as wide as high); read it as a single "
                        f"image, without a direction")
    half = w // 2
    a, b = img.crop((0, 0, half, h)), img.crop((half, 0, 2 * half, h))
    return (a, b) if direction == "AtoB" else (b, a)
