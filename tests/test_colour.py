"""Colour decorrelation (Cholesky whitening) and normalisation in ``featvis.colour``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from featvis.colour import ColourTransform, InputConvention, grey_to_rgb, to_grey
from featvis.data import CIFARDataModule


def _correlated_images(count: int = 64, size: int = 16, seed: int = 0) -> torch.Tensor:
    """RGB images in [0, 1] whose channels are strongly correlated (like natural images)."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.rand(count, 1, size, size, generator=generator)
    own = torch.rand(count, 3, size, size, generator=generator)
    weights = torch.tensor([0.6, 0.5, 0.3]).view(1, 3, 1, 1)
    return (weights * shared + (1 - weights) * own * torch.tensor([1.0, 0.6, 0.9]).view(1, 3, 1, 1)).clamp(
        0, 1
    )


def _covariance(images: torch.Tensor) -> np.ndarray:
    """Population covariance (divide by N) of the channels of ``(N, 3, H, W)`` images, in float64."""
    colours = images.double().permute(1, 0, 2, 3).reshape(3, -1).numpy()
    return np.cov(colours, bias=True)


def test_from_pixels_matches_scipy_cholesky_of_inverse_covariance() -> None:
    images = _correlated_images()
    colours = images.double().permute(1, 0, 2, 3).reshape(3, -1).numpy()
    cov = np.cov(colours, bias=True)
    assert abs(cov[0, 1]) > 0.2 * np.sqrt(cov[0, 0] * cov[1, 1])  # the test data really is correlated

    transform = ColourTransform.from_pixels(images)

    expected = scipy.linalg.cholesky(np.linalg.inv(cov), lower=False).T
    np.testing.assert_allclose(transform.matrix.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(transform.mean.double().numpy(), colours.mean(axis=1), atol=1e-6)
    # W = U.T with U upper triangular: W is lower triangular.
    assert torch.equal(transform.matrix, torch.tril(transform.matrix))


def test_whitened_training_pixels_have_identity_covariance() -> None:
    images = _correlated_images(count=128, seed=1)
    transform = ColourTransform.from_pixels(images)
    whitened = transform.to_model(images)
    assert whitened.shape == images.shape
    np.testing.assert_allclose(_covariance(whitened), np.eye(3), atol=1e-3)
    np.testing.assert_allclose(whitened.double().mean(dim=(0, 2, 3)).numpy(), np.zeros(3), atol=1e-4)
    # Without the transform the covariance is far from the identity.
    assert np.abs(_covariance(images) - np.eye(3)).max() > 0.5


def test_uint8_images_and_colour_rows_give_the_same_transform() -> None:
    rng = np.random.default_rng(2)
    mixing = np.array([[1.0, 0.8, 0.5], [0.0, 0.6, 0.4], [0.0, 0.0, 0.5]])
    colours = np.clip(rng.normal(0.5, 0.15, size=(4096, 3)) @ mixing / 1.5, 0, 1)
    as_uint8 = (colours * 255).round().astype(np.uint8)
    images = torch.from_numpy(as_uint8.T.reshape(3, 16, 16, 16).transpose(1, 0, 2, 3).copy())
    from_images = ColourTransform.from_pixels(images)
    from_rows = ColourTransform.from_pixels(as_uint8.astype(np.float64) / 255)
    torch.testing.assert_close(from_images.matrix, from_rows.matrix, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_images.mean, from_rows.mean, rtol=1e-6, atol=1e-6)
    whitened = from_images.to_model(images.double() / 255)
    np.testing.assert_allclose(_covariance(whitened), np.eye(3), atol=1e-3)


def test_to_rgb_inverts_to_model() -> None:
    transform = ColourTransform.from_pixels(_correlated_images(seed=3))
    rgb = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(transform.to_rgb(transform.to_model(rgb)), rgb, atol=1e-5, rtol=0)
    model_space = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(
        transform.to_model(transform.to_rgb(model_space)), model_space, atol=1e-4, rtol=0
    )
    assert torch.equal(transform(rgb), transform.to_model(rgb))


def test_to_model_is_per_pixel_affine_and_differentiable() -> None:
    transform = ColourTransform([0.1, 0.2, 0.3], [[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 4.0]])
    rgb = torch.rand(2, 3, 5, 5, requires_grad=True)
    out = transform.to_model(rgb)
    # Pixel (1, 2, 3): row vector (rgb - mean) times the matrix.
    pixel = rgb[1, :, 2, 3].detach() - torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(out[1, :, 2, 3], pixel @ transform.matrix)
    out.sum().backward()
    assert rgb.grad is not None
    torch.testing.assert_close(rgb.grad[0, :, 0, 0], transform.matrix.sum(dim=1))


def test_from_normalisation_is_mean_std_normalisation() -> None:
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    transform = ColourTransform.from_normalisation(mean, std)
    rgb = torch.rand(3, 3, 6, 6)
    expected = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(transform.to_model(rgb), expected)
    torch.testing.assert_close(transform.to_rgb(expected), rgb, atol=1e-6, rtol=0)
    identity = ColourTransform.identity()
    assert torch.equal(identity.to_model(rgb), rgb)


def test_buffers_follow_state_dict() -> None:
    source = ColourTransform.from_pixels(_correlated_images(seed=4))
    target = ColourTransform.identity()
    target.load_state_dict(source.state_dict())
    for name in ("mean", "matrix", "inverse"):
        assert torch.equal(getattr(target, name), getattr(source, name))
    assert set(source.state_dict()) == {"mean", "matrix", "inverse"}


def test_singular_matrix_is_rejected() -> None:
    with pytest.raises(ValueError, match="singular"):
        ColourTransform([0.0, 0.0, 0.0], [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # Greyscale pixels (R = G = B) have a singular colour covariance: nothing to whiten.
    grey = torch.rand(4, 1, 8, 8).expand(4, 3, 8, 8)
    with pytest.raises(ValueError, match="singular"):
        ColourTransform.from_pixels(grey)


@pytest.mark.parametrize(
    ("mean", "matrix", "pattern"),
    [
        ([0.0, 0.0], np.eye(3), "mean"),
        ([0.0] * 4, np.eye(3), "mean"),
        ([0.0] * 3, np.eye(2), "3x3"),
        ([0.0] * 3, np.eye(3)[:2], "3x3"),
        ([float("nan"), 0.0, 0.0], np.eye(3), "finite"),
        ([0.0] * 3, np.full((3, 3), np.inf), "finite"),
    ],
)
def test_wrong_shapes_or_values_raise_value_error(
    mean: list[float], matrix: np.ndarray, pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        ColourTransform(mean, torch.as_tensor(matrix))


def test_bad_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="std"):
        ColourTransform.from_normalisation([0.5] * 3, [0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="std"):
        ColourTransform.from_normalisation([0.5] * 3, [0.2, 0.2])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        ColourTransform.from_pixels(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="colours"):
        ColourTransform.from_pixels(np.random.rand(10, 2))
    transform = ColourTransform.identity()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        transform.to_model(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        transform.to_rgb(torch.rand(1, 1, 8, 8))


def test_datamodule_fits_the_transform_on_training_pixels(cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), val_size=20)
    datamodule.setup("fit")
    train_images, _ = datamodule.split("train")
    expected = ColourTransform.from_pixels(train_images)
    assert torch.equal(datamodule.colour.matrix, expected.matrix)
    whitened = datamodule.to_model_space(train_images)
    np.testing.assert_allclose(_covariance(whitened), np.eye(3), atol=1e-3)
    # decorrelate=False: per-channel mean/std normalisation, a diagonal matrix.
    plain = CIFARDataModule(data_dir=str(cifar_dir), val_size=20, decorrelate=False)
    plain.setup("fit")
    assert torch.equal(plain.colour.matrix, torch.diag(torch.diagonal(plain.colour.matrix)))
    normalised = plain.to_model_space(train_images).double()
    np.testing.assert_allclose(normalised.std(dim=(0, 2, 3)).numpy(), np.ones(3), atol=1e-3)
    np.testing.assert_allclose(normalised.mean(dim=(0, 2, 3)).numpy(), np.zeros(3), atol=1e-4)


@pytest.mark.slow
def test_real_training_set_is_whitened_to_identity_covariance(real_cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(real_cifar_dir), download=False)
    datamodule.setup("fit")
    train_images, _ = datamodule.split("train")
    assert train_images.shape[0] == 50000
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    count = 0
    for start in range(0, train_images.shape[0], 5000):
        whitened = datamodule.to_model_space(train_images[start : start + 5000]).double()
        colours = whitened.permute(1, 0, 2, 3).reshape(3, -1)
        total += colours.sum(dim=1)
        outer += colours @ colours.T
        count += colours.shape[1]
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    np.testing.assert_allclose(cov.numpy(), np.eye(3), atol=1e-3)
    np.testing.assert_allclose(mean.numpy(), np.zeros(3), atol=1e-3)
    # Real photos have strongly correlated channels, so whitening was not a no-op.
    raw_cov = np.linalg.inv(
        datamodule.colour.matrix.double().numpy() @ datamodule.colour.matrix.double().numpy().T
    )
    assert raw_cov[0, 1] / np.sqrt(raw_cov[0, 0] * raw_cov[1, 1]) > 0.8


# ------------------------------------------------------------------------------------ 1-channel (grey) spaces


def test_grey_transforms_whiten_and_normalise_one_channel() -> None:
    grey = _correlated_images(count=32, seed=5)[:, 1:2]  # (N, 1, H, W)
    transform = ColourTransform.from_pixels(grey)
    assert transform.channels == 1 and transform.matrix.shape == (1, 1)
    whitened = transform.to_model(grey).double()
    assert abs(float(whitened.mean())) < 1e-5 and abs(float(whitened.std(unbiased=False)) - 1) < 1e-4
    assert torch.allclose(transform.to_rgb(whitened.float()), grey, atol=1e-5)
    normalised = ColourTransform.from_normalisation([0.4], [0.2])
    assert torch.allclose(normalised.to_model(torch.full((1, 1, 2, 2), 0.6)), torch.ones(1, 1, 2, 2))
    assert ColourTransform.identity(1).channels == 1 and torch.equal(
        ColourTransform.identity(1).matrix, torch.eye(1)
    )
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        normalised.to_model(torch.rand(1, 3, 2, 2))
    with pytest.raises(ValueError, match="1 positive value"):
        ColourTransform.from_normalisation([0.4], [0.2, 0.2])
    restored = ColourTransform.identity(1)
    restored.load_state_dict(transform.state_dict())
    assert torch.equal(restored.inverse, transform.inverse)


def test_luma_of_pure_colours_and_grey_shown_as_rgb() -> None:
    pure = torch.eye(3).view(3, 3, 1, 1)  # red, green, blue pixels
    assert to_grey(pure).flatten().tolist() == pytest.approx([0.299, 0.587, 0.114])
    assert to_grey(torch.ones(1, 3, 2, 2)).flatten().tolist() == pytest.approx([1.0] * 4)
    grey = torch.rand(2, 1, 3, 3)
    shown = grey_to_rgb(grey)
    assert shown.shape == (2, 3, 3, 3) and all(torch.equal(shown[:, c : c + 1], grey) for c in range(3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        to_grey(grey)


# ------------------------------------------------------------------------------------------ input conventions

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _affine_to_model(x: torch.Tensor) -> torch.Tensor:
    """A module-level (importable) function pair: [0, 1] to [-1, 1] and back."""
    return x * 2 - 1


def _affine_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


CONVENTIONS = {
    "mean_std": InputConvention(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "255": InputConvention(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], max_value=255),
    "bgr": InputConvention(
        mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395], max_value=255, order="BGR"
    ),
    "grey": InputConvention(mean=[0.45], std=[0.25], order="L"),
    "callable": InputConvention(to_model=_affine_to_model, to_rgb=_affine_to_rgb),
    "grey_callable": InputConvention(to_model=_affine_to_model, to_rgb=_affine_to_rgb, order="L"),
}


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_every_convention_round_trips(name: str) -> None:
    convention = CONVENTIONS[name]
    space = convention.space()
    channels = 1 if "grey" in name else 3
    assert convention.channels == space.channels == channels
    generator = torch.Generator().manual_seed(0)
    colours = torch.rand(2, channels, 5, 7, generator=generator)
    model_input = space.to_model(colours)
    assert model_input.shape == colours.shape
    assert torch.allclose(space.to_rgb(model_input), colours, atol=1e-5)
    inputs = torch.randn(2, channels, 5, 7, generator=generator)
    assert torch.allclose(space.to_model(space.to_rgb(inputs)), inputs, atol=1e-4)
    assert space.copy("cpu", torch.float64).to_model(colours.double()).dtype == torch.float64


def test_bgr_swaps_channels_and_255_scales() -> None:
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    bgr = CONVENTIONS["bgr"].space().to_model(red)[0, :, 0, 0]
    # Model channel 2 is red: (255 - 123.675) / 58.395; channels 0 (blue) and 1 (green) see 0.
    assert bgr.tolist() == pytest.approx([-103.53 / 57.375, -116.28 / 57.12, 131.325 / 58.395], abs=1e-5)
    rgb = CONVENTIONS["255"].space().to_model(red)[0, :, 0, 0]
    assert rgb.tolist() == pytest.approx([131.325 / 58.395, -116.28 / 57.12, -103.53 / 57.375], abs=1e-5)
    colours = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    raw = InputConvention(max_value=255).space().to_model(colours)
    assert torch.allclose(raw, colours * 255, atol=1e-4)
    # The mmcv [0, 255] convention and the torchvision [0, 1] one are the same map.
    unit = CONVENTIONS["mean_std"].space().to_model(colours)
    assert torch.allclose(CONVENTIONS["255"].space().to_model(colours), unit, atol=1e-5)
    grey = CONVENTIONS["grey"].space().to_model(to_grey(red))
    assert torch.allclose(grey, torch.full((1, 1, 2, 2), (0.299 - 0.45) / 0.25), atol=1e-6)


def test_plain_normalisation_is_bit_identical_to_from_normalisation() -> None:
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    space = InputConvention.from_normalisation(mean, std).space()
    reference = ColourTransform.from_normalisation(mean, std)
    assert isinstance(space, ColourTransform)
    for key in ("mean", "matrix", "inverse"):
        assert torch.equal(getattr(space, key), getattr(reference, key)), key
    assert InputConvention().space().matrix.tolist() == torch.eye(3).tolist()


def test_lists_are_stored_as_tuples_and_the_state_round_trips_through_json() -> None:
    convention = InputConvention(mean=[0.5], std=[0.25], order="L")
    assert convention.mean == (0.5,) and convention.std == (0.25,) and hash(convention)
    for name, original in CONVENTIONS.items():
        state = json.loads(json.dumps(original.to_state()))
        assert InputConvention.from_state(state) == original, name
    state = CONVENTIONS["callable"].to_state()
    assert state["to_model"].endswith(":_affine_to_model") and state["callables"] is True


def test_unimportable_functions_are_not_silently_dropped() -> None:
    lambdas = InputConvention(to_model=lambda x: x * 2, to_rgb=lambda x: x / 2)
    state = lambdas.to_state()
    assert state["to_model"] is None and state["to_rgb"] is None
    with pytest.raises(ValueError, match="not importable module-level functions"):
        InputConvention.from_state(state)
    moved = CONVENTIONS["callable"].to_state() | {"to_rgb": "no_such_module_xyz:inverse"}
    with pytest.raises(ValueError, match=r"to_rgb function 'no_such_module_xyz:inverse'"):
        InputConvention.from_state(moved)
    with pytest.raises(ValueError, match=r"unknown input convention key\(s\) \['scale'\]"):
        InputConvention.from_state({"scale": 2})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"order": "L", "mean": [0.5] * 3, "std": [0.2] * 3},
            r"order 'L' \(grayscale\) takes 1 mean and 1 std value, got 3",
        ),
        (
            {"mean": [0.5], "std": [0.2]},
            r"order 'RGB' takes 3 mean and 3 std values, got 1; pass order='L'",
        ),
        ({"mean": [0.5] * 3, "std": [0.2]}, "got 3 and 1"),
        ({"order": "rgb"}, "order must be 'RGB', 'BGR' or 'L'"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
        ({"mean": [123.675, 116.28, 103.53]}, r"outside \[0, max_value=1\].*pass max_value=255"),
        (
            {"mean": [123.0] * 3, "std": [0.2] * 3, "max_value": 255},
            "std .* is in \\[0, 1\\] units but max_value is 255",
        ),
        ({"max_value": 0}, "max_value must be a finite number > 0, got 0"),
        ({"mean": ["a", 1, 2]}, "mean must be a list of finite numbers"),
        ({"to_model": _affine_to_model}, "only to_model was given; pass to_model and to_rgb together"),
        (
            {"to_model": _affine_to_model, "to_rgb": _affine_to_rgb, "max_value": 255},
            "do not combine with mean",
        ),
        (
            {"to_model": _affine_to_model, "to_rgb": _affine_to_model},
            "to_model and to_rgb must be inverse maps",
        ),
    ],
)
def test_bad_conventions_raise_one_line_errors_naming_the_fix(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        InputConvention(**fields)
    assert "\n" not in str(caught.value)
