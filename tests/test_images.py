"""Grids, upsampling and PNG files shared by the callback and ``featvis render``."""

from __future__ import annotations

import pytest
import torch

from featvis.images import (
    grid,
    labelled_grid,
    load_png,
    safe_name,
    save_png,
    to_uint8,
    upsample,
    write_image_folder,
)


def test_upsample_repeats_each_pixel() -> None:
    image = torch.arange(12.0).view(1, 3, 2, 2)
    big = upsample(image, 3)
    assert big.shape == (1, 3, 6, 6)
    assert torch.equal(big[0, 1, :3, 3:], torch.full((3, 3), image[0, 1, 0, 1].item()))
    with pytest.raises(ValueError, match="scale"):
        upsample(image, 0)


def test_grid_places_tiles_row_major_with_padding() -> None:
    tiles = torch.rand(2, 3, 3, 4, 5)
    out = grid(tiles, scale=2, padding=1, fill=0.5)
    assert out.shape == (3, 2 * 8 + 3, 3 * 10 + 4)
    # Row 1, column 2 starts after two paddings and one tile vertically, three paddings and two tiles across.
    assert torch.equal(out[:, 10:18, 23:33], upsample(tiles[1, 2], 2))
    assert torch.all(out[:, 0, :] == 0.5)
    with pytest.raises(ValueError, match="rows, cols"):
        grid(torch.rand(3, 4, 4))


def test_labelled_grid_adds_margins_with_text_and_keeps_the_tiles() -> None:
    tiles = torch.rand(3, 4, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    rows, columns = ["airplane", "cat", "net.group2.conv1.ch3"], ["0", "1", "2", "17"]
    bare = grid(tiles, scale=4, padding=2)
    out = labelled_grid(tiles, rows, columns, scale=4, padding=2, corner="epoch")
    top, left = out.shape[1] - bare.shape[1], out.shape[2] - bare.shape[2]
    assert top >= 10 and left >= 10  # room for a line of text above and the longest label beside
    assert torch.equal(out[:, top:, left:], bare)  # the tile area is the bare grid, pixel for pixel
    background = out[:, :top, :left].amax()  # white margins with dark text
    assert float(background) == 1.0
    for row in range(3):  # a dark label beside every row, inside the row's band
        band = out[:, top + 2 + row * 22 : top + 2 + row * 22 + 20, :left]
        assert float(band.amin()) < 0.3, rows[row]
    for col in range(4):  # a dark label above every column, inside the column's band
        band = out[:, :top, left + 2 + col * 26 : left + 2 + col * 26 + 24]
        assert float(band.amin()) < 0.3, columns[col]
    # The longest label needs a wider margin than the shortest one would.
    narrow = labelled_grid(tiles, ["a", "b", "c"], columns, scale=4, padding=2)
    assert narrow.shape[2] < out.shape[2] and torch.equal(narrow[:, top:, -bare.shape[2] :], bare)
    with pytest.raises(ValueError, match="3 row labels and 4 column labels"):
        labelled_grid(tiles, rows[:2], columns, scale=4)


def test_png_round_trip_is_exact_at_8_bits(tmp_path) -> None:
    image = torch.rand(3, 7, 9)
    save_png(image, tmp_path / "a" / "x.png")
    back = load_png(tmp_path / "a" / "x.png")
    assert back.shape == (3, 7, 9)
    assert torch.equal((back * 255).round().to(torch.uint8), to_uint8(image).permute(2, 0, 1))


def test_write_image_folder_layout(tmp_path) -> None:
    rgb = torch.rand(2, 3, 3, 8, 8)
    paths = write_image_folder(rgb, ["cat", "a/b"], tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "cat/0.png",
        "cat/1.png",
        "cat/2.png",
        "a_b/0.png",
        "a_b/1.png",
        "a_b/2.png",
    ]
    assert torch.allclose(load_png(paths[4]), rgb[1, 1], atol=1 / 255)
    assert safe_name("..") == "target"
    with pytest.raises(ValueError, match="names"):
        write_image_folder(rgb, ["one"], tmp_path)
