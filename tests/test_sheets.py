"""featvis.sheets: a row per channel, its visualisations, a separator, then its top examples."""

from __future__ import annotations

import pytest
import torch

from featvis.images import labelled_grid
from featvis.sheets import channel_sheet


def _tiles(units: int, count: int, value: float, size: int = 6) -> torch.Tensor:
    """Flat tiles whose shade tells where each one came from: ``value + 0.01 * (row * 10 + column)``."""
    shade = value + 0.01 * torch.arange(units * count, dtype=torch.float32).reshape(units, count, 1, 1, 1)
    return shade.expand(units, count, 3, size, size).clone()


def test_rows_hold_the_visualisations_then_a_separator_then_the_examples() -> None:
    rendered, examples = _tiles(3, 2, 0.1), _tiles(3, 4, 0.5)
    tags, scale, padding = ["a.ch0", "a.ch5", "a.ch2"], 2, 2
    sheet = channel_sheet(rendered, examples, tags, scale=scale, padding=padding, corner="a")
    plain = labelled_grid(
        torch.cat([rendered, examples], dim=1),
        tags,
        ["vis 1", "vis 2", "top 1", "top 2", "top 3", "top 4"],
        scale=scale,
        padding=padding,
        corner="a",
    )
    band = sheet.shape[2] - plain.shape[2]
    assert sheet.shape[:2] == plain.shape[:2] and band > 0
    tile = 6 * scale
    left = plain.shape[2] - (6 * tile + 7 * padding)  # labelled_grid's margin
    top = plain.shape[1] - (3 * tile + 4 * padding)
    split = left + padding + 2 * (tile + padding)
    # Everything left of the separator is the labelled grid as it was: margin, tags, visualisations.
    assert torch.equal(sheet[:, :, :split], plain[:, :, :split])
    assert torch.equal(sheet[:, :, split + band :], plain[:, :, split:])
    separator = sheet[:, top:, split : split + band]
    assert float(separator.min()) < 0.9 and float(separator.max()) == 1.0  # a grey line on white
    for row in range(3):
        y = top + padding + row * (tile + padding)
        for col in range(2):
            x = left + padding + col * (tile + padding)
            assert torch.allclose(
                sheet[:, y : y + tile, x : x + tile], rendered[row, col, :, :1, :1].expand(3, tile, tile)
            )
        for col in range(4):
            x = split + band + col * (tile + padding)
            assert torch.allclose(
                sheet[:, y : y + tile, x : x + tile], examples[row, col, :, :1, :1].expand(3, tile, tile)
            )


def test_examples_of_another_size_are_resized_to_the_renders() -> None:
    rendered, examples = _tiles(2, 1, 0.2, size=8), _tiles(2, 3, 0.6, size=16)
    sheet = channel_sheet(rendered, examples, ["x", "y"])
    same = channel_sheet(rendered, _tiles(2, 3, 0.6, size=8), ["x", "y"])
    assert sheet.shape == same.shape
    assert torch.allclose(sheet, same, atol=1e-5)  # flat tiles stay flat when resized
    assert float(sheet.min()) >= 0.0 and float(sheet.max()) <= 1.0


def test_channel_sheet_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="expected 2 tags, one per channel, got 1"):
        channel_sheet(_tiles(2, 1, 0.2), _tiles(2, 3, 0.5), ["x"])
    with pytest.raises(ValueError, match="with the same U"):
        channel_sheet(_tiles(2, 1, 0.2), _tiles(3, 3, 0.5), ["x", "y"])
