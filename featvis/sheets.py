"""Channel sheets and the specialisation plot: pictures of what a layer's chosen channels do.

Pure PyTorch plus Pillow, no Lightning import (and no matplotlib: Pillow draws the plot).

:func:`channel_sheet`: one row per channel: its rendered images, a separator, then its top dataset examples,
highest first; the channel's tag in the left margin and ``vis``/``top 1``... above the columns. Receptive-field
crops of the examples are not drawn: the examples are shown whole (at a CIFAR-sized layer a unit's receptive field
covers most of the image anyway).

:func:`purity_curve`: each channel's class purity over the rendered epochs, one coloured line per channel and a
thick black line for their mean, so one picture shows whether the channels specialise as training goes on.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from featvis.engine.checks import check_int
from featvis.images import label_font, labelled_grid

#: Separator between a row's visualisations and its examples: fill, a grey line, fill (pixels).
_GAP, _LINE, _LINE_GREY = 4, 2, 0.55


def channel_sheet(
    rendered: Tensor,
    examples: Tensor,
    tags: Sequence[str],
    *,
    scale: int = 1,
    padding: int = 2,
    corner: str = "",
) -> Tensor:
    """One picture of ``U`` channels: per row, ``K`` visualisations, a separator, ``n`` top examples.

    Args:
        rendered: ``(U, K, 3, H, W)`` visualisations, RGB in [0, 1].
        examples: ``(U, n, 3, h, w)`` each channel's top dataset examples, highest first, RGB in [0, 1];
            resized to ``H x W`` when their size differs.
        tags: one label per channel (e.g. ``net.group3.ch7``), drawn in the left margin.
        scale: nearest-neighbour upsampling factor of every tile.
        padding: pixels between tiles (after upsampling).
        corner: caption at the top left (e.g. the layer name or the epoch).

    Returns:
        ``(3, height, width)`` RGB in [0, 1] on a white background.

    Raises:
        ValueError: shapes that do not match, or a tag count other than ``U``.
    """
    if rendered.ndim != 5 or examples.ndim != 5 or rendered.shape[0] != examples.shape[0]:
        raise ValueError(
            f"expected rendered (U, K, 3, H, W) and examples (U, n, 3, h, w) with the same U, got "
            f"{tuple(rendered.shape)} and {tuple(examples.shape)}."
        )
    units, per_unit, _, height, width = rendered.shape
    if len(tags) != units:
        raise ValueError(f"expected {units} tags, one per channel, got {len(tags)}.")
    count = examples.shape[1]
    examples = examples.detach().float().cpu()
    if examples.shape[-2:] != (height, width):
        flat = F.interpolate(examples.flatten(0, 1), size=(height, width), mode="bilinear", antialias=True)
        examples = flat.reshape(units, count, 3, height, width)
    tiles = torch.cat([rendered.detach().float().cpu(), examples], dim=1)
    columns = ["vis"] if per_unit == 1 else [f"vis {i + 1}" for i in range(per_unit)]
    columns += [f"top {i + 1}" for i in range(count)]
    sheet = labelled_grid(tiles, list(tags), columns, scale=scale, padding=padding, corner=corner)
    # labelled_grid puts the bare grid in the bottom-right corner: its left margin is what is left of the width.
    grid_width = (per_unit + count) * width * scale + (per_unit + count + 1) * padding
    split = sheet.shape[2] - grid_width + padding + per_unit * (width * scale + padding)
    band = torch.ones(3, sheet.shape[1], 2 * _GAP + _LINE)
    band[:, :, _GAP : _GAP + _LINE] = _LINE_GREY
    return torch.cat([sheet[:, :, :split], band, sheet[:, :, split:]], dim=2)


#: Channel line colours: Tableau's ten without its grey (the axes' colour), then hues spread by the golden ratio.
_PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
)
_INK, _AXIS, _GRID, _PAPER = (0, 0, 0), (150, 150, 150), (225, 225, 225), (255, 255, 255)
#: Plot layout (pixels): margin around labels, tick length, inset of the data in the frame, line widths, legend
#: swatch length and gap between legend rows.
_MARGIN, _TICK, _INSET, _LINE_WIDTH, _MEAN_WIDTH, _SWATCH, _ROW_GAP = 4, 3, 6, 2, 4, 12, 2


def curve_colours(count: int) -> list[tuple[int, int, int]]:
    """The line colours :func:`purity_curve` gives channels ``0 .. count - 1``, as 8-bit RGB.

    Args:
        count: how many colours.

    Returns:
        ``count`` distinct colours, none of them black, white or grey.
    """
    colours = list(_PALETTE[: check_int("count", count, 0)])
    for index in range(count - len(colours)):
        red, green, blue = colorsys.hsv_to_rgb(
            (0.05 + index * 0.618034) % 1.0, 0.8, 0.85 - 0.25 * (index % 2)
        )
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colours


def purity_curve(
    epochs: Sequence[int],
    purity: Tensor,
    tags: Sequence[str],
    *,
    height: int = 240,
    width: int = 360,
    title: str | None = None,
) -> Tensor:
    """Class purity over training: one coloured line per channel, a thick black line for their mean.

    The x axis is the epochs (ascending whatever their order here, ticked at each, labelled where the labels fit,
    always at the first and last), the y axis purity from 0 to 1 (grid lines at 0, 0.5 and 1). A NaN purity (no
    labels) is left out: a line only joins consecutive epochs with a value, a lone value is a dot. The legend on
    the right names the mean and the channels in their colours (``+N more`` where they do not fit).

    Args:
        epochs: ``E`` distinct epochs, one per row of ``purity``.
        purity: ``(E, U)`` class purity of each channel's top examples at each epoch, in [0, 1] or NaN.
        tags: one label per channel (e.g. ``net.group3.ch7``), shown in the legend.
        height: picture height in pixels (at least 120).
        width: picture width in pixels (at least 160).
        title: the caption at the top left; None writes ``class purity``.

    Returns:
        ``(3, height, width)`` RGB in [0, 1] on a white background.

    Raises:
        ValueError: shapes or counts that do not match, repeated epochs, purity outside [0, 1], a picture too small.
    """
    height, width = check_int("height", height, 120), check_int("width", width, 160)
    if not isinstance(purity, Tensor) or purity.ndim != 2 or purity.shape[0] < 1 or purity.shape[1] < 1:
        shape = tuple(purity.shape) if isinstance(purity, Tensor) else type(purity).__name__
        raise ValueError(f"expected purity of shape (epochs, channels), at least (1, 1), got {shape}.")
    count, units = purity.shape
    if len(epochs) != count or len(tags) != units:
        raise ValueError(
            f"expected {count} epochs and {units} tags for purity of shape {tuple(purity.shape)}, got "
            f"{len(epochs)} and {len(tags)}."
        )
    listed = [check_int("every epoch", epoch) for epoch in epochs]
    if len(set(listed)) != count:
        raise ValueError(f"epochs must be distinct, got {listed}.")
    order = sorted(range(count), key=listed.__getitem__)
    steps, values = [listed[i] for i in order], purity.detach().float().cpu()[order]
    known = values[~values.isnan()]
    if known.numel() and not (known.isfinite().all() and known.min() >= 0 and known.max() <= 1):
        low, high = float(known.min()), float(known.max())
        raise ValueError(
            f"purity must lie in [0, 1] (NaN without labels), got values from {low:g} to {high:g}."
        )
    mean = values.nanmean(dim=1)  # NaN where no channel has a value

    image = Image.new("RGB", (width, height), _PAPER)
    pen = _Pen(image)
    # The legend's entries: the mean, then the channels in their colours; long tags shortened.
    entries: list[tuple[str, tuple[int, int, int] | None, int]] = [("mean", _INK, _MEAN_WIDTH)]
    entries += [
        (_fit(str(tag), width // 4, pen.size), colour, _LINE_WIDTH)
        for tag, colour in zip(tags, curve_colours(units), strict=True)
    ]
    # The frame: the y labels (and the x axis's caption) left of it, the x labels below, the title above, the
    # legend right of it, cut to the rows that fit beside it.
    y_labels = {1.0: "1", 0.5: "0.5", 0.0: "0"}
    left = 2 * _MARGIN + _TICK + max(pen.size(label) for label in [*y_labels.values(), "epoch"])
    top = 2 * _MARGIN + pen.line_height
    bottom = height - 1 - (_TICK + 2 * _MARGIN + pen.line_height)
    rows = max(1, (bottom - top + 1) // (pen.line_height + _ROW_GAP))
    if len(entries) > rows:
        entries = [*entries[: rows - 1], (f"+{len(entries) - rows + 1} more", None, 0)]
    right = width - 1 - (_SWATCH + 3 * _MARGIN + max(pen.size(label) for label, _, _ in entries))
    pen.draw.rectangle((left, top, right, bottom), outline=_AXIS)
    pen.text(title if title is not None else "class purity", _MARGIN, _MARGIN)

    x_low, x_high, y_one, y_zero = left + _INSET, right - _INSET, top + _INSET, bottom - _INSET
    span = steps[-1] - steps[0]
    xs = [
        (x_low + x_high) / 2 if span == 0 else x_low + (step - steps[0]) / span * (x_high - x_low)
        for step in steps
    ]

    def y_of(value: float) -> float:
        return y_zero - value * (y_zero - y_one)

    for value, label in y_labels.items():
        y = round(y_of(value))
        pen.draw.line([(left + 1, y), (right - 1, y)], fill=_GRID)
        pen.draw.line([(left - _TICK, y), (left - 1, y)], fill=_AXIS)
        pen.text(label, left - _TICK - _MARGIN - pen.size(label), y - pen.line_height / 2)
    label_y = bottom + _TICK + _MARGIN
    pen.text("epoch", left - _TICK - _MARGIN - pen.size("epoch"), label_y)
    placed: list[tuple[float, float]] = []  # x ranges of the epoch labels drawn, so none overlap
    for index in [0, count - 1, *range(1, count - 1)]:  # the first and last always, the rest where they fit
        label, tick = str(steps[index]), round(xs[index])
        start = min(max(xs[index] - pen.size(label) / 2, left - _TICK), width - 1 - pen.size(label))
        end = start + pen.size(label)
        if all(end + _MARGIN < a or b + _MARGIN < start for a, b in placed):
            placed.append((start, end))
            pen.text(label, start, label_y)
        pen.draw.line([(tick, bottom + 1), (tick, bottom + _TICK)], fill=_AXIS)

    # Dots at the points where the epochs lie far enough apart to show them, and always at a lone point.
    dots = count == 1 or (x_high - x_low) / (count - 1) >= 12
    series = [(values[:, unit], colour, _LINE_WIDTH) for unit, colour in enumerate(curve_colours(units))]
    for line, colour, line_width in [*series, (mean, _INK, _MEAN_WIDTH)]:
        points = [None if math.isnan(float(v)) else (xs[i], y_of(float(v))) for i, v in enumerate(line)]
        for run in _runs(points):
            if len(run) > 1:
                pen.draw.line(run, fill=colour, width=line_width, joint="curve")
            if dots or len(run) == 1:
                radius = line_width / 2 + 1
                for x, y_point in run:
                    pen.draw.ellipse(
                        (x - radius, y_point - radius, x + radius, y_point + radius), fill=colour
                    )
    if not known.numel():
        note = "no labels, purity unknown"
        pen.text(note, (left + right - pen.size(note)) / 2, (top + bottom - pen.line_height) / 2)
    _legend(pen, entries, right + 2 * _MARGIN, top)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return pixels.permute(2, 0, 1).float() / 255


class _Pen:
    """Black labels in Pillow's default font on ``image``, placed by the top left of their box."""

    def __init__(self, image: Image.Image) -> None:
        self.draw = ImageDraw.Draw(image)
        self.font = label_font()
        _, self.line_top, _, line_bottom = self.box("Ag0")  # one line box, so labels share a baseline
        self.line_height = line_bottom - self.line_top

    def box(self, label: str) -> tuple[int, int, int, int]:
        """The label's ``(left, top, right, bottom)`` in whole pixels, drawn at the origin."""
        left, top, right, bottom = self.draw.textbbox((0, 0), label, font=self.font)
        return math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom)

    def size(self, label: str) -> int:
        """The label's width in pixels."""
        left, _, right, _ = self.box(label)
        return right - left

    def text(self, label: str, x: float, y: float) -> None:
        """Draw ``label`` with the top left of its line box at ``(x, y)``."""
        self.draw.text(
            (round(x) - self.box(label)[0], round(y) - self.line_top), label, fill=_INK, font=self.font
        )


def _legend(
    pen: _Pen, entries: list[tuple[str, tuple[int, int, int] | None, int]], left: int, top: int
) -> None:
    """Draw ``(label, colour or None, line width)`` entries as rows of a swatch and a label, from ``top`` down."""
    for row, (label, colour, line_width) in enumerate(entries):
        y = top + row * (pen.line_height + _ROW_GAP)
        if colour is not None:
            middle = round(y + pen.line_height / 2)
            pen.draw.line([(left, middle), (left + _SWATCH, middle)], fill=colour, width=line_width)
        pen.text(label, left + _SWATCH + _MARGIN, y)


def _runs(points: list[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    """The stretches of consecutive points that are not None (a NaN purity breaks a line)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point is None:
            runs.append([])
        else:
            runs[-1].append(point)
    return [run for run in runs if run]


def _fit(label: str, limit: int, size: Callable[[str], int]) -> str:
    """``label``, cut and ended with ``..`` where it is wider than ``limit`` pixels."""
    if size(label) <= limit:
        return label
    while len(label) > 1 and size(label + "..") > limit:
        label = label[:-1]
    return label + ".."


__all__ = ["channel_sheet", "curve_colours", "purity_curve"]
