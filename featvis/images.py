"""Image output shared by the callback and ``featvis render``: grids, nearest-neighbour upsampling, PNG files.

Pure PyTorch plus Pillow, no Lightning import.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

_LABEL_GAP = 4  # pixels between a label and the tiles, and around the margins


def to_uint8(rgb: Tensor) -> Tensor:
    """RGB in [0, 1], ``(3, H, W)``, to a ``(H, W, 3)`` uint8 tensor on the CPU (rounded, clipped)."""
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"expected an RGB image of shape (3, H, W), got {tuple(rgb.shape)}.")
    return (rgb.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()


def save_png(rgb: Tensor, path: str | Path) -> None:
    """Write one RGB image in [0, 1], ``(3, H, W)``, as an 8-bit PNG (parent folders are created).

    Args:
        rgb: the image.
        path: destination file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(rgb).numpy(), mode="RGB").save(path, format="PNG")


def load_png(path: str | Path) -> Tensor:
    """Read an RGB PNG as a float ``(3, H, W)`` tensor in [0, 1]."""
    with Image.open(path) as image:
        array = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
        width, height = image.size
    return array.view(height, width, 3).permute(2, 0, 1).float() / 255


def upsample(images: Tensor, scale: int) -> Tensor:
    """Nearest-neighbour upsampling of ``(..., 3, H, W)`` images by an integer factor, so pixels stay sharp."""
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    if scale == 1:
        return images
    return images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def grid(images: Tensor, scale: int = 1, padding: int = 2, fill: float = 1.0) -> Tensor:
    """Tile a ``(rows, cols, 3, H, W)`` batch into one ``(3, H', W')`` image, rows top to bottom.

    Args:
        images: the tiles, RGB in [0, 1].
        scale: nearest-neighbour upsampling factor of every tile.
        padding: pixels between tiles and around the border (after upsampling).
        fill: value of the padding.
    """
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"expected tiles of shape (rows, cols, 3, H, W), got {tuple(images.shape)}.")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}.")
    tiles = upsample(images.detach().float().cpu(), scale)
    rows, cols, _, height, width = tiles.shape
    out = torch.full(
        (3, rows * height + (rows + 1) * padding, cols * width + (cols + 1) * padding),
        fill,
        dtype=tiles.dtype,
    )
    for r in range(rows):
        for c in range(cols):
            top = padding + r * (height + padding)
            left = padding + c * (width + padding)
            out[:, top : top + height, left : left + width] = tiles[r, c]
    return out


def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font of every label featvis draws: Pillow's built-in one at 11 px (at its default 10 px the dot of
    ``net.group3`` merges into the ``t`` before it)."""
    return ImageFont.load_default(size=11)


def labelled_grid(
    images: Tensor,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    scale: int = 1,
    padding: int = 2,
    fill: float = 1.0,
    corner: str = "",
) -> Tensor:
    """:func:`grid` with a label per row in a left margin and a label per column in a top margin.

    The labels are drawn with Pillow's default font, in black on a light ``fill`` (white on a dark one); the tile
    area is :func:`grid`'s picture, pixel for pixel, in the bottom-right corner.

    Args:
        images: the tiles, ``(rows, cols, 3, H, W)`` RGB in [0, 1].
        row_labels: one label per row, right-aligned beside it (e.g. class names).
        column_labels: one label per column, centred above it (e.g. epoch numbers).
        scale: nearest-neighbour upsampling factor of every tile.
        padding: pixels between tiles and around the border (after upsampling).
        fill: value of the padding and the margins.
        corner: a caption for the column labels, at the top left (e.g. ``"epoch"``).

    Returns:
        ``(3, top + H', left + W')`` where ``(3, H', W')`` is the bare grid.
    """
    bare = grid(images, scale=scale, padding=padding, fill=fill)
    rows, cols, _, height, width = images.shape
    if len(row_labels) != rows or len(column_labels) != cols:
        raise ValueError(
            f"expected {rows} row labels and {cols} column labels, got {len(row_labels)} and {len(column_labels)}."
        )
    font = label_font()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    # Label boxes (left, top, right, bottom) in whole pixels; one line box, so every label shares a baseline.
    boxes = {
        label: [math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])]
        for label in [*row_labels, *column_labels, corner, "Ag0"]
        for box in [measure.textbbox((0, 0), label, font=font)]
    }
    line_top, line_height = boxes["Ag0"][1], boxes["Ag0"][3] - boxes["Ag0"][1]
    left = max(box[2] - box[0] for box in boxes.values()) + 2 * _LABEL_GAP
    top = line_height + 2 * _LABEL_GAP
    mask = Image.new("L", (left + bare.shape[2], top + bare.shape[1]), 0)
    draw = ImageDraw.Draw(mask)

    def text(label: str, x: float, y: float) -> None:  # (x, y): top left of the label's box
        draw.text((round(x) - boxes[label][0], round(y) - line_top), label, fill=255, font=font)

    tile_height, tile_width = height * scale, width * scale
    for row, label in enumerate(row_labels):
        middle = top + padding + row * (tile_height + padding) + tile_height / 2
        text(label, left - _LABEL_GAP - (boxes[label][2] - boxes[label][0]), middle - line_height / 2)
    for col, label in enumerate(column_labels):
        middle = left + padding + col * (tile_width + padding) + tile_width / 2
        text(label, middle - (boxes[label][2] - boxes[label][0]) / 2, _LABEL_GAP)
    text(corner, _LABEL_GAP, _LABEL_GAP)
    alpha = (
        torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).view(1, mask.height, mask.width) / 255
    )
    ink = 0.0 if fill >= 0.5 else 1.0
    out = (fill * (1 - alpha) + ink * alpha).expand(3, -1, -1).clone()
    out[:, top:, left:] = bare
    return out


def safe_name(name: str) -> str:
    """A file and tag name made of letters, digits, ``-``, ``_`` and ``.`` (other characters become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "target"


def write_image_folder(rgb: Tensor, names: list[str], folder: str | Path) -> list[Path]:
    """Write ``(targets, images, 3, H, W)`` RGB images as ``folder/<name>/<i>.png`` at native size.

    Args:
        rgb: the images, RGB in [0, 1].
        names: one folder name per target.
        folder: destination folder.

    Returns:
        The written paths, target-major.
    """
    if rgb.ndim != 5 or rgb.shape[0] != len(names):
        raise ValueError(f"expected (len(names)={len(names)}, K, 3, H, W) images, got {tuple(rgb.shape)}.")
    paths = []
    for target_images, name in zip(rgb, names, strict=True):
        for index, image in enumerate(target_images):
            path = Path(folder) / safe_name(name) / f"{index}.png"
            save_png(image, path)
            paths.append(path)
    return paths


def fsync_tree(folder: str | Path) -> None:
    """Flush every file below ``folder`` to disk (before an atomic rename makes it look complete)."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
