"""Colour decorrelation (Cholesky whitening) and normalisation in ``featvis.colour``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from featvis.colour import ColourTransform
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
