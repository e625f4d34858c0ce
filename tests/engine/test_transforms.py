"""Per-sample random transforms: draws, reproducibility, exact geometry, fusion and errors."""

from __future__ import annotations

import pytest
import torch

from featvis.engine.transforms import (
    Compose,
    Flip,
    Jitter,
    Pad,
    Rotate,
    Scale,
    default_transforms,
    slice_params,
    warp,
)


def _images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("transform", "key"),
    [(Jitter(2.0), "shift"), (Scale(0.8, 1.2), "factor"), (Rotate(15.0), "angle"), (Pad(2), "fill")],
)
def test_draws_differ_per_sample_and_repeat_with_the_same_generator(transform, key: str) -> None:
    first = transform.make_params(8, (16, 16), torch.Generator().manual_seed(5))[key]
    again = transform.make_params(8, (16, 16), torch.Generator().manual_seed(5))[key]
    other = transform.make_params(8, (16, 16), torch.Generator().manual_seed(6))[key]
    assert first.shape[0] == 8
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    flat = first.reshape(8, -1)
    assert len({tuple(row.tolist()) for row in flat}) == 8  # every image has its own draw


def test_draws_stay_within_their_magnitudes() -> None:
    generator = torch.Generator().manual_seed(0)
    shift = Jitter(2.0).make_params(1000, (32, 32), generator)["shift"]
    factor = Scale(0.9, 1.1).make_params(1000, (32, 32), generator)["factor"]
    angle = Rotate(10.0).make_params(1000, (32, 32), generator)["angle"]
    assert shift.abs().max().item() <= 2.0 and shift.abs().max().item() > 1.8
    assert factor.min().item() >= 0.9 and factor.max().item() <= 1.1
    assert angle.abs().max().item() <= 10.0 and angle.abs().max().item() > 9.0
    integer = Jitter(2, integer=True).make_params(1000, (32, 32), generator)["shift"]
    assert set(integer.unique().tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}


def test_zero_shift_is_the_identity_and_a_whole_pixel_shift_rolls() -> None:
    images = _images()
    jitter = Jitter(1.0)
    same = jitter.apply(images, {"shift": torch.zeros(4, 2)})
    assert torch.allclose(same, images, atol=1e-5)
    right = jitter.apply(images, {"shift": torch.tensor([[1.0, 0.0]] * 4)})
    # Content moves one pixel right; the column that enters is the out-of-canvas fill (zeros for a bare warp).
    assert torch.allclose(right[..., 1:], images[..., :-1], atol=1e-5)
    assert right[..., 0].abs().max().item() == 0.0
    down = jitter.apply(images, {"shift": torch.tensor([[0.0, 2.0]] * 4)})
    assert torch.allclose(down[..., 2:, :], images[..., :-2, :], atol=1e-5)


def test_rotation_by_a_right_angle_and_flip_are_exact() -> None:
    images = _images(size=8)
    quarter = Rotate(90.0).apply(images, {"angle": torch.full((4,), 90.0)})
    assert torch.allclose(quarter, torch.rot90(images, k=-1, dims=(2, 3)), atol=1e-5)
    flipped = Flip(1.0).apply(images, Flip(1.0).make_params(4, (8, 8), torch.Generator()))
    assert torch.allclose(flipped, images.flip(3), atol=1e-5)
    kept = Flip(0.0).apply(images, Flip(0.0).make_params(4, (8, 8), torch.Generator()))
    assert torch.allclose(kept, images, atol=1e-5)


def test_scale_zooms_about_the_centre() -> None:
    images = torch.zeros(1, 1, 8, 8)
    images[..., 3:5, 3:5] = 1.0  # a 2x2 square in the middle
    doubled = Scale(2.0, 2.0).apply(images, {"factor": torch.tensor([2.0])})
    assert doubled.sum().item() == pytest.approx(16.0, rel=1e-4)  # area x4
    assert torch.allclose(doubled, doubled.flip(2).flip(3))  # still centred


def test_pad_grows_the_canvas_with_a_per_image_fill() -> None:
    images = _images(n=3, size=8)
    pad = Pad(2, fill="colour")
    params = pad.make_params(3, (8, 8), torch.Generator().manual_seed(0))
    padded = pad.apply(images, params)
    assert padded.shape == (3, 3, 12, 12) and pad.output_size((8, 8)) == (12, 12)
    assert torch.equal(padded[..., 2:10, 2:10], images)
    corners = padded[..., 0, 0]
    assert torch.equal(corners, params["fill"][..., 0, 0])
    assert not torch.equal(corners[0], corners[1])
    assert corners.min().item() >= 0 and corners.max().item() <= 1  # a valid RGB colour
    grey = Pad(2, fill="grey")
    border = grey.apply(images, grey.make_params(3, (8, 8), torch.Generator()))[..., 0, :]
    assert torch.equal(border, torch.full_like(border, 0.5))


def test_compose_fuses_affine_transforms_into_one_resampling() -> None:
    images = _images()
    compose = Compose([Jitter(1.0), Jitter(1.0)], padding_mode="zeros")
    params = compose.make_params(4, (16, 16), torch.Generator().manual_seed(1))
    fused = compose.apply(images, params)
    total = params["0.shift"] + params["1.shift"]
    assert torch.allclose(fused, Jitter(2.0).apply(images, {"shift": total}), atol=1e-5)


def test_compose_returns_the_input_size_and_is_differentiable() -> None:
    images = _images(n=5, size=32).requires_grad_(True)
    compose = Compose(default_transforms(32))
    params = compose.make_params(5, (32, 32), torch.Generator().manual_seed(2))
    out = compose.apply(images, params)
    assert out.shape == images.shape
    (grad,) = torch.autograd.grad(out.square().sum(), images)
    assert grad.abs().sum().item() > 0
    # Slices of one draw transform chunks of the batch exactly as the whole batch.
    head = compose.apply(images[:2], slice_params(params, slice(0, 2)))
    assert torch.allclose(head, out[:2], atol=1e-6)
    assert not torch.allclose(out[0], out[1])


def test_compose_without_affine_transforms_crops_back() -> None:
    images = _images(size=8)
    compose = Compose([Pad(3, fill="noise")])
    out = compose.apply(images, compose.make_params(4, (8, 8), torch.Generator()))
    assert torch.equal(out, images)


def test_warp_can_crop_to_a_smaller_output() -> None:
    images = _images(size=12)
    identity = torch.eye(3).repeat(4, 1, 1)
    assert torch.allclose(warp(images, identity, (8, 8)), images[..., 2:10, 2:10], atol=1e-5)


def test_default_transforms_are_sized_for_32_px() -> None:
    transforms = default_transforms(32)
    pads = [t.pixels for t in transforms if isinstance(t, Pad)]
    jitters = [t.pixels for t in transforms if isinstance(t, Jitter)]
    assert pads and max(pads) <= 2  # the ImageNet preset pads 12
    assert jitters and sum(jitters) <= 3  # and jitters 8 (+4)
    assert {type(t) for t in transforms} >= {Pad, Jitter, Scale, Rotate}
    bigger = [t.pixels for t in default_transforms(64) if isinstance(t, Jitter)]
    assert bigger == [2 * j for j in jitters]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Jitter(-1.0), "Jitter pixels must be a finite number >= 0, got -1.0"),
        (lambda: Jitter(float("nan")), "Jitter pixels must be a finite number"),
        (lambda: Scale(0.0, 1.0), "Scale low must be a finite number >= 0.001, got 0.0"),
        (lambda: Scale(1.2, 1.1), "Scale needs low <= high, got low=1.2, high=1.1"),
        (lambda: Rotate(200.0), r"Rotate degrees must be a finite number in \[0, 180\], got 200.0"),
        (lambda: Pad(-2), "Pad pixels must be an integer >= 0, got -2"),
        (lambda: Pad(1.5), "Pad pixels must be an integer >= 0, got 1.5"),
        (lambda: Pad(2, fill="blue"), "Pad fill must be"),
        (lambda: Flip(1.5), r"Flip p must be a finite number in \[0, 1\], got 1.5"),
        (lambda: Compose([Jitter(1), "rotate"]), "transforms\\[1\\] is a str"),
    ],
)
def test_bad_magnitudes_raise_precise_errors(make, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@pytest.mark.parametrize("size", [32, 64, 128, 224])
def test_default_magnitudes_grow_with_the_image_size(size: int) -> None:
    compose = Compose(default_transforms(size))
    params = compose.make_params(2000, (size, size), torch.Generator().manual_seed(0))
    largest = params["1.shift"].abs().max().item()  # the first jitter: 2 px at 32 px
    assert 2 * size / 32 * 0.95 < largest <= 2 * size / 32
    assert params["4.shift"].abs().max().item() <= size / 32
    # The pad's border, seen on a blank image: round(2 * size / 32) pixels on each side.
    pad = compose.transforms[0]
    border = pad.apply(torch.zeros(1, 3, size, size), {"fill": torch.ones(1, 3, 1, 1)})
    assert border.shape[-1] == size + 2 * round(2 * size / 32)
    assert border[0, 0, border.shape[-2] // 2].sum().item() == 2 * round(2 * size / 32)
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    out = compose.apply(images, compose.make_params(3, (size, size), torch.Generator().manual_seed(2)))
    assert out.shape == images.shape and torch.isfinite(out).all()


def test_non_square_sizes_scale_with_the_shorter_side() -> None:
    transforms = default_transforms((48, 64))
    assert [t.pixels for t in transforms if isinstance(t, Pad | Jitter)] == [3, 3.0, 1.5]
    compose = Compose(transforms)
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    out = compose.apply(images, compose.make_params(2, (48, 64), torch.Generator().manual_seed(1)))
    assert out.shape == (2, 3, 48, 64) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"image_size must be a positive integer or \(height, width\)"):
        default_transforms((48, 64, 3))


def test_grey_images_are_transformed_and_padded_with_the_luma_of_the_drawn_colour() -> None:
    grey = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    pad = Pad(2)
    params = pad.make_params(4, (16, 16), torch.Generator().manual_seed(1))
    padded = pad.apply(grey, params)
    weights = torch.tensor([0.299, 0.587, 0.114])
    assert torch.allclose(padded[:, 0, 0, 0], (params["fill"][:, :, 0, 0] * weights).sum(dim=1), atol=1e-6)
    compose = Compose(default_transforms(16))
    out = compose.apply(grey, compose.make_params(4, (16, 16), torch.Generator().manual_seed(2)))
    assert out.shape == grey.shape and out.min().item() >= 0 and out.max().item() <= 1
