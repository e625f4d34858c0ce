"""featvis.basis: the colour basis learned from the training data when neither data nor model has one."""

from __future__ import annotations

import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from featvis.basis import LearnedBasis, read_training_images
from featvis.colour import ColourTransform, InputConvention

MEAN, STD = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]


def correlated_rgb(count: int, size: int = 8, seed: int = 0) -> Tensor:
    """RGB images in [0, 1] whose channels move together: a shared grey level, a little tint and noise."""
    g = torch.Generator().manual_seed(seed)
    grey = 0.5 + 0.18 * torch.randn(count, 1, size, size, generator=g)
    tint = torch.tensor([0.03, 0.0, -0.03]).view(1, 3, 1, 1) * torch.randn(count, 1, 1, 1, generator=g)
    return (grey + tint + 0.03 * torch.randn(count, 3, size, size, generator=g)).clamp(0, 1)


def covariance(images: Tensor) -> Tensor:
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
    return torch.cov(pixels.T)


def normalised_loader(rgb: Tensor, **kwargs) -> DataLoader:
    model_space = ColourTransform.from_normalisation(MEAN, STD).to_model(rgb)
    return DataLoader(TensorDataset(model_space, torch.zeros(len(rgb), dtype=torch.long)), **kwargs)


def fake_trainer(loader: DataLoader | None, rank: int = 0, sent: object = None) -> SimpleNamespace:
    """What LearnedBasis reads of a Lightning trainer; ``sent`` is what rank 0 broadcasts to the other ranks."""
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj if rank == 0 else sent)
    return SimpleNamespace(
        datamodule=None, train_dataloader=loader, is_global_zero=rank == 0, strategy=strategy
    )


class Messages:
    """Records ``warn(key, message, info=False)`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def __call__(self, key: str, message: str, info: bool = False) -> None:
        self.calls.append((key, message, info))

    def warnings(self) -> list[str]:
        return [message for _, message, info in self.calls if not info]


def test_fitted_basis_whitens_strongly_correlated_training_pixels() -> None:
    rgb = correlated_rgb(400)
    correlation = torch.corrcoef(rgb.permute(1, 0, 2, 3).reshape(3, -1))
    assert float(correlation.min()) > 0.9  # the channels really are strongly correlated
    normalisation = ColourTransform.from_normalisation(MEAN, STD)
    assert float(covariance(normalisation.to_model(rgb))[0, 1]) > 0.5  # a normalisation does not decorrelate
    loader = normalised_loader(rgb, batch_size=32, shuffle=True)
    basis = LearnedBasis(Messages()).get(fake_trainer(loader), nn.Linear(1, 1), normalisation)
    assert basis is not None
    whitened = basis.to_model(rgb)
    assert torch.allclose(covariance(whitened), torch.eye(3, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(whitened.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    # Fitted on a quarter of the images, the basis still whitens all of them.
    part = ColourTransform.from_pixels(read_training_images(loader, normalisation, max_images=100))
    assert torch.allclose(covariance(part.to_model(rgb)), torch.eye(3, dtype=torch.float64), atol=0.1)


def test_reads_evenly_spaced_images_of_a_class_sorted_dataset() -> None:
    # The first half red, the second half blue: the first 10 images would be all red.
    rgb = torch.full((100, 3, 4, 4), 0.2)
    rgb[:50, 0], rgb[50:, 2] = 0.9, 0.9
    rgb += 0.01 * torch.randn(rgb.shape, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(rgb), batch_size=7)
    read = read_training_images(loader, ColourTransform.identity(), max_images=10)
    assert torch.equal(read, rgb[::10])


@pytest.mark.parametrize("form", ["dict", "tensor"])
def test_finds_the_images_in_dict_and_plain_tensor_batches(form: str) -> None:
    rgb = correlated_rgb(12)

    class Items(Dataset):
        def __len__(self) -> int:
            return len(rgb)

        def __getitem__(self, index: int) -> object:
            return {"label": index, "image": rgb[index]} if form == "dict" else rgb[index]

    read = read_training_images(DataLoader(Items(), batch_size=5), ColourTransform.identity())
    assert torch.equal(read, rgb)


def test_large_images_keep_a_regular_grid_of_pixels() -> None:
    rgb = correlated_rgb(3, size=64)
    read = read_training_images(DataLoader(TensorDataset(rgb), batch_size=2), ColourTransform.identity())
    assert torch.equal(read, rgb[..., ::2, ::2])  # 64 x 64 -> 32 x 32 = 1024 pixels per image
    # Whole images when asked (amplitude spectra need every pixel).
    whole = read_training_images(
        DataLoader(TensorDataset(rgb), batch_size=2), ColourTransform.identity(), 2, None
    )
    assert torch.equal(whole, rgb[:2])


class Unreadable(Dataset):
    """A dataset that must not be read."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> Tensor:
        raise AssertionError("the training data was read")


class NoisyImages(Dataset):
    """Images with a random jitter drawn from the global torch, Python and NumPy generators, as augmentations do."""

    def __init__(self, rgb: Tensor) -> None:
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        jitter = float(torch.rand(())) + random.random() + float(np.random.rand())
        return self.rgb[index] + 1e-3 * jitter, index


def test_fitting_leaves_every_random_state_and_the_training_shuffle_untouched() -> None:
    dataset = NoisyImages(correlated_rgb(40))
    loader = DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    twin = DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    model = nn.Linear(1, 1)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    basis = LearnedBasis(Messages()).get(fake_trainer(loader), model, None)
    assert basis is not None
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    # The training loader's own generator did not move: it shuffles exactly as its untouched twin.
    assert torch.equal(loader.generator.get_state(), twin.generator.get_state())
    order = [batch[1] for batch in loader]
    assert all(torch.equal(a, b[1]) for a, b in zip(order, twin, strict=True))


def test_warns_once_when_the_normalisation_disagrees_with_the_data() -> None:
    rgb = correlated_rgb(50)
    loader = normalised_loader(rgb, batch_size=16)  # normalised with MEAN/STD
    right, wrong = Messages(), Messages()
    LearnedBasis(right).get(
        fake_trainer(loader), nn.Linear(1, 1), ColourTransform.from_normalisation(MEAN, STD)
    )
    assert right.warnings() == []
    too_small = [s / 10 for s in STD]
    LearnedBasis(wrong).get(
        fake_trainer(loader), nn.Linear(1, 1), ColourTransform.from_normalisation(MEAN, too_small)
    )
    (message,) = wrong.warnings()
    assert "normalization_mean/normalization_std" in message and "standard deviations are only" in message
    assert "\n" not in message
    raw = Messages()  # normalised data, but the callback was told nothing: far outside [0, 1]
    LearnedBasis(raw).get(fake_trainer(loader), nn.Linear(1, 1), None)
    (message,) = raw.warnings()
    assert "through no normalisation" in message and "outside [-0.25, 1.25]" in message


def test_greyscale_or_imageless_data_fits_nothing_and_says_why() -> None:
    grey = correlated_rgb(10)[:, :1].expand(-1, 3, -1, -1).contiguous()  # singular colour covariance
    messages = Messages()
    learned = LearnedBasis(messages)
    assert (
        learned.get(fake_trainer(DataLoader(TensorDataset(grey), batch_size=4)), nn.Linear(1, 1), None)
        is None
    )
    assert "no colour basis learned" in messages.warnings()[0]
    features = Messages()
    loader = DataLoader(TensorDataset(torch.randn(10, 5)), batch_size=4)  # no (N, 3, H, W) tensor
    assert LearnedBasis(features).get(fake_trainer(loader), nn.Linear(1, 1), None) is None
    assert (
        features.calls == [("basis", features.calls[0][1], True)]
        and "no colour basis" in features.calls[0][1]
    )


def test_no_basis_when_the_model_has_a_colour_transform_or_no_loader_is_known() -> None:
    loader = normalised_loader(correlated_rgb(20), batch_size=8)
    model = nn.Linear(1, 1)
    model.colour = ColourTransform.from_normalisation(MEAN, STD)
    learned = LearnedBasis(Messages())
    assert learned.get(fake_trainer(loader), model, None) is None and learned.transform is None
    assert learned.get(None, nn.Linear(1, 1), None) is None  # outside a run: nothing to fit from
    assert learned.get(fake_trainer(loader), nn.Linear(1, 1), None) is not None  # ... which a later call can


def test_state_dict_round_trip_restores_the_buffers_bit_for_bit_without_refitting() -> None:
    loader = normalised_loader(correlated_rgb(30), batch_size=8)
    fitted = LearnedBasis(Messages())
    basis = fitted.get(fake_trainer(loader), nn.Linear(1, 1), ColourTransform.from_normalisation(MEAN, STD))
    state = fitted.state_dict()
    assert sorted(state) == ["basis_inverse", "basis_matrix", "basis_mean"]
    restored = LearnedBasis(Messages())
    restored.load_state_dict(state)
    again = restored.get(fake_trainer(DataLoader(Unreadable())), nn.Linear(1, 1), None)  # no refit
    for key in ("mean", "matrix", "inverse"):
        assert torch.equal(getattr(again, key), getattr(basis, key)), key
    empty = LearnedBasis(Messages())
    empty.load_state_dict({"format": 1})  # a checkpoint from before the learned basis
    assert empty.transform is None and empty.state_dict() == {}


def test_under_ddp_rank_zero_fits_and_the_others_take_its_basis() -> None:
    sent = ColourTransform.from_pixels(correlated_rgb(10))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learned = LearnedBasis(Messages())
        got = learned.get(fake_trainer(DataLoader(Unreadable()), rank=1, sent=sent), nn.Linear(1, 1), None)
    assert got is sent


def test_a_grayscale_space_learns_a_one_channel_basis_from_grey_batches() -> None:
    grey = correlated_rgb(60)[:, 1:2]  # (N, 1, H, W) grey levels
    space = InputConvention(mean=[0.5], std=[0.2], order="L").space()
    loader = DataLoader(TensorDataset(space.to_model(grey), torch.zeros(60, dtype=torch.long)), batch_size=16)
    messages = Messages()
    fitted = LearnedBasis(messages)
    basis = fitted.get(fake_trainer(loader), nn.Linear(1, 1), space)
    assert basis is not None and basis.channels == 1 and messages.warnings() == []
    assert abs(float(basis.mean) - float(grey.mean())) < 1e-5
    assert abs(float(basis.to_model(grey).double().std(unbiased=False)) - 1) < 1e-4  # whitened grey levels
    restored = LearnedBasis(Messages())
    restored.load_state_dict(fitted.state_dict())
    assert restored.transform is not None and torch.equal(restored.transform.inverse, basis.inverse)
    # The same grey batches through a 3-channel space hold no (N, 3, H, W) images: nothing is fitted.
    rgb_space = Messages()
    assert LearnedBasis(rgb_space).get(fake_trainer(loader), nn.Linear(1, 1), None) is None
    assert "no (N, 3, H, W) image tensor" in rgb_space.calls[0][1]


def _to_model(x: Tensor) -> Tensor:
    return x * 4 - 2


def _to_rgb(x: Tensor) -> Tensor:
    return (x + 2) / 4


def test_a_callable_space_maps_the_training_images_back_with_its_own_inverse() -> None:
    rgb = correlated_rgb(40)
    space = InputConvention(to_model=_to_model, to_rgb=_to_rgb).space()
    loader = DataLoader(TensorDataset(space.to_model(rgb)), batch_size=8)
    assert torch.allclose(read_training_images(loader, space), rgb, atol=1e-6)
    basis = LearnedBasis(Messages()).get(fake_trainer(loader), nn.Linear(1, 1), space)
    assert basis is not None
    assert torch.allclose(covariance(basis.to_model(rgb)), torch.eye(3, dtype=torch.float64), atol=1e-3)
    raw = Messages()  # read as if the model took RGB: values in [-2, 2], far outside [0, 1]
    LearnedBasis(raw).get(fake_trainer(loader), nn.Linear(1, 1), None)
    assert "outside [-0.25, 1.25]" in raw.warnings()[0]
