"""Channel sheets: each hidden channel's visualisations beside the dataset images that excite it most.

Pure PyTorch plus Pillow (through :func:`featvis.images.labelled_grid`), no Lightning import. One row per channel:
its rendered images, a separator, then its top dataset examples, highest first; the channel's tag in the left
margin and ``vis``/``top 1``... above the columns. Receptive-field crops of the examples are not drawn: the
examples are shown whole (at a CIFAR-sized layer a unit's receptive field covers most of the image anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from featvis.images import labelled_grid

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


__all__ = ["channel_sheet"]
