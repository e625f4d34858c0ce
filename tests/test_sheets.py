"""featvis.sheets: a row per channel, its visualisations, a separator, then its top examples."""

from __future__ import annotations

import pytest
import torch

from featvis.images import labelled_grid
from featvis.sheets import _AXIS, _GRID, channel_sheet, curve_colours, purity_curve


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


# ---- purity_curve -------------------------------------------------------------------------------------------


def _where(picture: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
    """``(H, W)`` mask of the pixels that are exactly ``colour`` (8-bit RGB)."""
    return (torch.round(picture * 255) == torch.tensor(colour, dtype=torch.float32)[:, None, None]).all(0)


class _Plot:
    """The plot's layout, found in the picture: the grey frame, its grid lines at 0, 0.5, 1, the epoch ticks."""

    def __init__(self, picture: torch.Tensor) -> None:
        self.picture = picture
        axis = _where(picture, _AXIS)
        self.left, self.right = sorted(axis.sum(0).topk(2).indices.tolist())
        self.top, self.bottom = sorted(axis.sum(1).topk(2).indices.tolist())
        # Just inside the frame's left side, left of every line and dot: only the grid lines cross it.
        grid = _where(picture, _GRID)[:, self.left + 1].nonzero().flatten().tolist()
        assert len(grid) == 3, grid
        self.one, self.half, self.zero = grid
        self.ticks = (
            axis[self.bottom + 2, self.left + 1 : self.right].nonzero().flatten().add(self.left + 1).tolist()
        )

    def purity(self, rows: torch.Tensor) -> torch.Tensor:
        """The purity a pixel row stands for, read off the grid lines at 1 and 0."""
        return (self.zero - rows.float()) / (self.zero - self.one)

    def inside(self, colour: tuple[int, int, int]) -> torch.Tensor:
        """Mask of ``colour`` inside the frame only (the legend's swatches are outside)."""
        mask = _where(self.picture, colour)
        inner = torch.zeros_like(mask)
        inner[self.top + 1 : self.bottom, self.left + 1 : self.right] = True
        return mask & inner

    def rows_at(self, colour: tuple[int, int, int], x: int) -> torch.Tensor:
        return self.inside(colour)[:, x].nonzero().flatten()


def test_constant_channels_sit_on_their_grid_lines_and_the_mean_between() -> None:
    picture = purity_curve([0, 1, 2, 3], torch.tensor([[1.0, 0.0]] * 4), ["a.ch0", "a.ch1"])
    assert picture.shape == (3, 240, 360) and float(picture.min()) >= 0 and float(picture.max()) <= 1
    plot = _Plot(picture)
    assert plot.one < plot.half < plot.zero and abs(2 * plot.half - plot.one - plot.zero) <= 1
    assert len(plot.ticks) == 4 and plot.left < plot.ticks[0] and plot.ticks[-1] < plot.right
    high, low = curve_colours(2)
    for colour, value in ((high, 1.0), (low, 0.0)):
        mask = plot.inside(colour)
        rows, columns = mask.nonzero().unbind(1)
        assert (plot.purity(rows) - value).abs().max() <= 0.02  # on its grid line, nowhere else
        assert set(range(plot.ticks[0], plot.ticks[-1] + 1)) <= set(columns.tolist())  # the whole epoch range
    middle = (plot.left + plot.right) // 2
    black = plot.rows_at((0, 0, 0), middle)
    assert len(black) >= 3 and (plot.purity(black) - 0.5).abs().max() <= 0.02  # the thick mean line


def test_lines_follow_the_values_in_epoch_order() -> None:
    rising = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    given = [4, 0, 8, 2, 6]  # any order: the x axis is ascending
    order = [e // 2 for e in given]
    purity = torch.stack([rising[order], 1 - rising[order]], dim=1)
    plot = _Plot(purity_curve(given, purity, ["up", "down"], title="net.conv"))
    assert len(plot.ticks) == 5
    spacing = [b - a for a, b in zip(plot.ticks, plot.ticks[1:], strict=False)]  # epochs 0, 2, ..., 8: evenly
    assert max(spacing) - min(spacing) <= 1
    up, down = curve_colours(2)
    for index, x in enumerate(plot.ticks):
        mean = plot.purity(plot.rows_at((0, 0, 0), x)).mean()
        assert float(mean) == pytest.approx(0.5, abs=0.02)
        if index != 2:  # where they cross, the mean line covers both
            assert float(plot.purity(plot.rows_at(up, x)).mean()) == pytest.approx(
                float(rising[index]), abs=0.02
            )
            assert float(plot.purity(plot.rows_at(down, x)).mean()) == pytest.approx(
                1 - float(rising[index]), abs=0.02
            )
    # Along x, the rising line's pixel row goes up (smaller rows), the falling one's down.
    for colour, sign in ((up, -1), (down, 1)):
        mask = plot.inside(colour)
        rows = [
            float(mask[:, x].nonzero().float().mean())
            for x in range(plot.ticks[0], plot.ticks[-1] + 1)
            if mask[:, x].any()
        ]
        assert all(sign * (b - a) >= -1 for a, b in zip(rows, rows[1:], strict=False))
        assert sign * (rows[-1] - rows[0]) > 0.7 * (plot.zero - plot.one)


def test_one_epoch_is_a_dot_in_the_middle() -> None:
    plot = _Plot(purity_curve([7], torch.tensor([[0.25, 0.75]]), ["x", "y"]))
    assert len(plot.ticks) == 1 and abs(plot.ticks[0] - (plot.left + plot.right) / 2) <= 1
    for colour, value in zip(curve_colours(2), (0.25, 0.75), strict=True):
        rows, columns = plot.inside(colour).nonzero().unbind(1)
        assert 4 <= len(rows) <= 40  # a dot, not a line
        assert (columns - plot.ticks[0]).abs().max() <= 3
        assert float(plot.purity(rows).mean()) == pytest.approx(value, abs=0.02)
    assert float(plot.purity(plot.rows_at((0, 0, 0), plot.ticks[0])).mean()) == pytest.approx(0.5, abs=0.02)


def test_nan_purity_is_left_out() -> None:
    nan = float("nan")
    purity = torch.tensor(
        [[0.2, 0.9, nan], [0.2, 0.9, nan], [nan, 0.9, nan], [0.8, 0.9, nan], [0.8, 0.9, nan]]
    )
    plot = _Plot(purity_curve(range(5), purity, ["gap", "full", "none"]))
    gap, full, none = curve_colours(3)
    assert not plot.inside(none).any()  # no labels: no line (its legend swatch is outside the frame)
    columns = plot.inside(gap).nonzero()[:, 1]
    assert (columns <= plot.ticks[1] + 3).any() and (columns >= plot.ticks[3] - 3).any()
    assert not ((columns > plot.ticks[1] + 3) & (columns < plot.ticks[3] - 3)).any()  # the gap is not bridged
    for x, value in zip(
        plot.ticks, (0.55, 0.55, 0.9, 0.85, 0.85), strict=True
    ):  # the mean of the known values
        assert float(plot.purity(plot.rows_at((0, 0, 0), x)).mean()) == pytest.approx(value, abs=0.02)
    blank = _Plot(purity_curve([0, 1], torch.full((2, 2), nan), ["a", "b"]))
    assert not any(blank.inside(colour).any() for colour in curve_colours(2))  # and a note says why


def test_size_title_and_a_legend_cut_to_fit() -> None:
    units = 30
    purity = torch.linspace(0, 1, units).expand(4, units)
    picture = purity_curve([0, 1, 2, 3], purity, [f"c{u}" for u in range(units)], height=160, width=220)
    assert picture.shape == (3, 160, 220)
    assert torch.equal(picture[:, 0, :], torch.ones(3, 220))  # white paper
    assert torch.equal(picture[:, :, -1], torch.ones(3, 160))  # the legend, "+N more" too, fits in the width
    plot = _Plot(picture)
    legend = picture[:, :, plot.right + 1 :]
    shown = [bool(_where(legend, colour).any()) for colour in curve_colours(units)]
    assert shown[0] and not shown[-1] and 3 <= sum(shown) < units  # the first channels, then "+N more"
    assert shown == sorted(shown, reverse=True)
    swatches = torch.stack([_where(legend, colour) for colour in curve_colours(units)]).any(0).nonzero()[:, 0]
    assert (
        plot.top <= int(swatches.min()) and int(swatches.max()) <= plot.bottom
    )  # beside the frame, no lower
    far = [
        colour
        for colour, value in zip(curve_colours(units), purity[0], strict=True)
        if abs(value - 0.5) > 0.1
    ]
    assert all(
        bool(plot.inside(colour).any()) for colour in far
    )  # every line is drawn (but under the mean's)
    titled = purity_curve(
        [0, 1, 2, 3], purity, [f"c{u}" for u in range(units)], height=160, width=220, title="Z"
    )
    assert not torch.equal(titled[:, :20], picture[:, :20]) and torch.equal(titled[:, 20:], picture[:, 20:])


def test_curve_colours_are_distinct_and_not_grey() -> None:
    colours = curve_colours(40)
    assert len(set(colours)) == 40 and curve_colours(3) == colours[:3]
    assert all(max(c) - min(c) >= 40 for c in colours)  # none grey, black or white


def test_purity_curve_rejects_bad_input() -> None:
    good = torch.full((3, 2), 0.5)
    for args, kwargs, message in (
        (([0, 1, 2], torch.full((3,), 0.5), ["a"]), {}, r"shape \(epochs, channels\)"),
        (([0, 1, 2], torch.zeros(3, 0), []), {}, r"at least \(1, 1\)"),
        (([0, 1], good, ["a", "b"]), {}, "expected 3 epochs and 2 tags"),
        (([0, 1, 2], good, ["a"]), {}, "expected 3 epochs and 2 tags"),
        (([0, 1, 1], good, ["a", "b"]), {}, "epochs must be distinct"),
        (([0, 1, 2.5], good, ["a", "b"]), {}, "every epoch must be an integer"),
        (([0, 1, 2], good + 0.6, ["a", "b"]), {}, r"purity must lie in \[0, 1\]"),
        (([0, 1, 2], good, ["a", "b"]), {"height": 50}, "height must be an integer >= 120"),
        (([0, 1, 2], good, ["a", "b"]), {"width": 100}, "width must be an integer >= 160"),
    ):
        with pytest.raises(ValueError, match=message):
            purity_curve(*args, **kwargs)
