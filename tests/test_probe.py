"""featvis.probe: the fixed probe set, unit activations without side effects, top examples, choice, purity, agreement."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import TinyClassifier
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from featvis.colour import ColourTransform
from featvis.data import CIFARDataModule
from featvis.probe import (
    ProbeSet,
    agreement,
    choose_channels,
    class_purity,
    layer_activations,
    top_examples,
    unit_activations,
)

COLOUR = ColourTransform.from_normalisation([0.5, 0.4, 0.3], [0.25, 0.2, 0.3])


def _data(count: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 8, 8, generator=generator), torch.randint(
        0, 3, (count,), generator=generator
    )


def test_probe_indices_are_drawn_by_the_seed_alone() -> None:
    first, again, other = (
        ProbeSet.choose(100, 10, 3),
        ProbeSet.choose(100, 10, 3),
        ProbeSet.choose(100, 10, 4),
    )
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.unique().numel() == 10 and torch.equal(first, first.sort().values)
    assert int(first.min()) >= 0 and int(first.max()) < 100
    assert torch.equal(ProbeSet.choose(5, 10, 3), torch.arange(5))  # fewer images than asked: all of them


def test_from_tensors_maps_uint8_rgb_to_model_space_and_model_space_back_to_rgb() -> None:
    generator = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(30) % 3
    probe = ProbeSet.from_tensors(stored, labels, seed=1, size=7, colour=COLOUR)
    assert probe.indices.tolist() == ProbeSet.choose(30, 7, 1).tolist()
    assert torch.equal(probe.rgb, stored[probe.indices].float() / 255)
    assert torch.allclose(probe.images, COLOUR.to_model(probe.rgb), atol=1e-6)
    assert torch.equal(probe.labels, labels[probe.indices])
    # Model-space floats: kept as they are, shown through the inverse colour map.
    model_space = COLOUR.to_model(stored.float() / 255)
    again = ProbeSet.from_tensors(model_space, None, seed=1, size=7, colour=COLOUR)
    assert torch.equal(again.images, model_space[probe.indices]) and again.labels is None
    assert torch.allclose(again.rgb, probe.rgb, atol=1e-5)


def test_from_loader_reads_the_chosen_images_without_touching_the_loader_or_global_rng() -> None:
    images, labels = _data()
    loader = DataLoader(
        TensorDataset(images, labels), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)
    )
    expected_order = [batch[1].tolist() for batch in loader]  # the shuffle of the next epoch (same generator)
    loader.generator.manual_seed(5)
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    expected_draws = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(11), random.seed(11), np.random.seed(11)

    probe = ProbeSet.from_loader(loader, size=12, seed=2, colour=COLOUR)

    assert (torch.rand(1), random.random(), np.random.rand()) == expected_draws
    assert [batch[1].tolist() for batch in loader] == expected_order
    assert torch.equal(probe.indices, ProbeSet.choose(40, 12, 2))
    assert torch.equal(probe.images, images[probe.indices])
    assert torch.equal(probe.labels, labels[probe.indices])
    assert torch.allclose(probe.rgb, COLOUR.to_rgb(images[probe.indices]).clamp(0, 1))
    # The same seed over the same data gives the same probe set whichever way it is read.
    assert torch.equal(ProbeSet.from_tensors(images, labels, 2, 12).images, probe.images)


def test_from_loader_reads_datasets_that_yield_single_samples_or_unlabelled_batches() -> None:
    images, labels = _data()
    single = ProbeSet.from_loader(DataLoader(TensorDataset(images, labels), batch_size=None), 6, 0)
    assert torch.equal(single.images, images[single.indices]) and torch.equal(
        single.labels, labels[single.indices]
    )
    unlabelled = ProbeSet.from_loader(DataLoader(TensorDataset(images), batch_size=4), 6, 0)
    assert torch.equal(unlabelled.images, single.images) and unlabelled.labels is None


def test_probe_set_survives_a_state_dict_round_trip_under_another_seed() -> None:
    images, labels = _data()
    probe = ProbeSet.from_tensors(images, labels, seed=7, size=10)
    state = probe.state_dict()
    restored = ProbeSet.from_tensors(images, labels, seed=8, size=10, indices=state["indices"])
    assert torch.equal(restored.indices, probe.indices) and torch.equal(restored.images, probe.images)
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    assert torch.equal(ProbeSet.from_loader(loader, 10, 99, indices=state["indices"]).images, probe.images)


def test_probe_set_rejects_what_it_cannot_read() -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2, 3, 4, 4)

    with pytest.raises(ValueError, match="without indices; build the probe set with ProbeSet.from_tensors"):
        ProbeSet.from_loader(DataLoader(Stream(), batch_size=None), 4, 0)
    with pytest.raises(ValueError, match="no \\(N, C, H, W\\) image tensor"):
        ProbeSet.from_loader(DataLoader(TensorDataset(torch.zeros(5, 2)), batch_size=2), 4, 0)
    images, labels = _data(10)
    with pytest.raises(ValueError, match="do not fit a dataset of 10 images"):
        ProbeSet.from_tensors(images, labels, 0, 4, indices=torch.tensor([3, 12]))
    with pytest.raises(ValueError, match="expected 10 labels"):
        ProbeSet.from_tensors(images, labels[:4], 0, 4)
    with pytest.raises(ValueError, match="probe_size must be an integer >= 1"):
        ProbeSet.choose(10, 0, 0)


def _captured(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Brute force: the layer's raw output in eval mode, from a hook of the test's own."""
    outputs = []
    handle = layer.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach()))
    model.eval()
    with torch.no_grad():
        model(images)
    handle.remove()
    return outputs[0]


def test_unit_activations_match_a_hooked_forward_and_leave_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = TinyClassifier()
    model.train()
    with torch.no_grad():  # BatchNorm statistics that an eval-mode pass must not move
        model.net.bn.running_mean.uniform_(-1, 1)
    images, _ = _data(20)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    torch.manual_seed(3)
    expected_draw = torch.rand(1)
    torch.manual_seed(3)

    means = unit_activations(model, "net.bn", images, batch_size=6)
    centre = unit_activations(model, "net.bn", images, neuron=True)
    both = layer_activations(model, ["net.act", "net.head"], images)

    assert torch.rand(1) == expected_draw  # dropout in train mode would have drawn from the global RNG
    assert all(m.training for m in model.modules())
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
    raw = _captured(model, model.net.bn, images)
    assert means.shape == (20, 6) and torch.allclose(means, raw.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(centre, raw[:, :, 4, 4], atol=1e-6)
    assert torch.allclose(both["net.act"], raw.relu().mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(both["net.head"], model(images), atol=1e-6)  # (N, F) outputs: features are channels


def test_unit_activations_reject_layers_without_a_channel_axis_or_spatial_maps_for_neurons() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(0), nn.Linear(4 * 4 * 4, 2))
    images = torch.zeros(1, 3, 4, 4)
    with pytest.raises(
        ValueError, match=r"'1' outputs shape \(64,\), which has no channel axis; choose a layer"
    ):
        unit_activations(model, "1", images)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    with pytest.raises(
        ValueError, match="neuron objectives need a layer with \\(N, C, H, W\\) outputs.*set neuron"
    ):
        unit_activations(linear, "1", images, neuron=True)
    with pytest.raises(
        ValueError, match=r"unknown layer '2' in Sequential; valid names include: \['0', '1'\]"
    ):
        unit_activations(linear, "2", images)


def test_top_examples_are_the_true_top_n_by_brute_force() -> None:
    torch.manual_seed(0)
    model = TinyClassifier()
    images, _ = _data(30, seed=4)
    acts = unit_activations(model, "net.act", images)
    channels, n = [5, 0, 3], 4
    top = top_examples(acts, channels, n)
    assert top.shape == (3, 4)
    for row, channel in enumerate(channels):
        values = [float(v) for v in acts[:, channel]]
        brute = sorted(range(len(values)), key=lambda i: (-values[i], i))[:n]
        assert top[row].tolist() == brute
    constant = torch.zeros(6, 2)
    assert top_examples(constant, [1], 3).tolist() == [[0, 1, 2]]  # ties: lowest probe position first
    with pytest.raises(ValueError, match="examples=7 is more than the 6 probe images"):
        top_examples(constant, [0], 7)


def test_choose_channels_by_variance_is_deterministic_and_ranked() -> None:
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 5.0, 0.0, 3.0, 0.5])
    acts = torch.randn(200, 5, generator=generator) * scales + 7.0  # the offset must not matter
    assert choose_channels(acts, 3, rule="variance") == [1, 3, 0]
    assert choose_channels(acts.clone(), 3, rule="variance") == choose_channels(acts, 3, rule="variance")
    assert choose_channels(acts, 5, rule="variance")[-1] == 2  # a dead channel comes last
    with pytest.raises(ValueError, match="k=6 channels asked of a layer that has 5; set k <= 5"):
        choose_channels(acts, 6)
    with pytest.raises(
        ValueError, match="rule must be one of 'selectivity', 'kurtosis', 'variance', 'change'"
    ):
        choose_channels(acts, 2, rule="entropy")  # type: ignore[arg-type]


def test_choose_channels_by_kurtosis_prefers_sparse_channels_whatever_their_scale() -> None:
    generator = torch.Generator().manual_seed(0)
    sparse = torch.zeros(400)
    sparse[torch.randperm(400, generator=generator)[:4]] = 1.0  # fires for 1% of the images
    columns = [
        torch.rand(400, generator=generator) * 100,  # uniform, loud: kurtosis 1.8
        torch.randn(400, generator=generator),  # Gaussian: 3
        torch.full((400,), 4.0),  # constant: 0
        sparse * 0.01 - 5.0,  # sparse, quiet and shifted: about 97
        torch.randn(400, generator=generator).pow(3),  # heavy-tailed: far above 3
    ]
    acts = torch.stack(columns, dim=1)
    assert choose_channels(acts, 5, rule="kurtosis") == [3, 4, 1, 0, 2]
    assert choose_channels(acts * 3 + 1, 5, rule="kurtosis") == [3, 4, 1, 0, 2]
    assert choose_channels(acts, 5, rule="variance")[0] == 0  # variance would take the loud uniform one


def test_choose_channels_by_selectivity_wants_every_example_to_stand_out_not_one_outlier() -> None:
    generator = torch.Generator().manual_seed(0)
    acts = torch.randn(300, 4, generator=generator)
    acts[:6, 0] += 8.0  # six images far above the rest: the most selective channel
    acts[0, 1] += 40.0  # one outlier image: a kurtosis magnet, but its sixth example is ordinary
    acts[:, 2] *= 50.0  # loud but unselective
    acts[:6, 3] += 4.0  # selective, less so
    ranked = choose_channels(acts, 4, examples=6)
    assert ranked[:2] == [0, 3]
    assert choose_channels(acts, 1, rule="kurtosis") == [1]
    assert choose_channels(acts * 7 - 3, 4, examples=6) == ranked  # shift and scale free
    assert choose_channels(acts, 1, examples=1) == [1]  # with one example shown, the outlier is what it shows
    flat = torch.zeros(50, 2)
    flat[:6, 1] = 1.0  # constant on most images: finite, and above the constant channel
    assert choose_channels(flat, 2) == [1, 0]


def test_choose_channels_by_change_finds_the_channel_whose_pattern_changed() -> None:
    generator = torch.Generator().manual_seed(1)
    previous = torch.randn(100, 4, generator=generator)
    now = previous.clone()
    now[:, 0] *= 10.0  # louder, same pattern: not a change of what it responds to
    now[:, 2] = now[torch.randperm(100, generator=generator), 2]  # responds to other images now
    now[:, 3] = 0.8 * now[:, 3] + 0.6 * torch.randn(100, generator=generator)  # partly changed
    assert choose_channels(now, 2, rule="change", previous=previous) == [2, 3]
    assert choose_channels(now, 4, rule="change", previous=previous)[-2:] in ([0, 1], [1, 0])
    assert choose_channels(now, 2, rule="change") == choose_channels(now, 2)  # first epoch: selectivity
    with pytest.raises(ValueError, match="previous activations have shape \\(100, 3\\)"):
        choose_channels(now, 2, rule="change", previous=previous[:, :3])


def test_class_purity_is_the_share_of_the_commonest_class() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    top = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 2, 3], [6, 2, 5]])
    assert torch.allclose(class_purity(top, labels), torch.tensor([2 / 3, 1.0, 1 / 3, 2 / 3]))


def test_agreement_counts_shared_neighbours_against_a_deranged_baseline() -> None:
    # Probe features: four clusters of three images on the axes; each channel's examples are one cluster and
    # its visualisation sits on that axis.
    axes = torch.eye(4)
    probe_features = axes.repeat_interleave(3, dim=0) + 0.01 * torch.arange(12).unsqueeze(1)
    top = torch.arange(12).reshape(4, 3)
    result = agreement(axes, probe_features, top, n=3, seed=0)
    assert result["overlap"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert result["baseline"].tolist() == [0.0, 0.0, 0.0, 0.0]  # every channel is paired with another's
    swapped = agreement(axes[[1, 0, 2, 3]], probe_features, top, n=3)  # two visualisations swapped
    assert swapped["overlap"].tolist() == [0.0, 0.0, 1.0, 1.0]
    repeated = agreement(axes.unsqueeze(1).expand(4, 2, 4), probe_features, top, n=2)  # K=2 images each
    assert repeated["overlap"].tolist() == [1.0, 1.0, 1.0, 1.0]
    single = agreement(axes[:1], probe_features, top[:1], n=3)
    assert single["overlap"].tolist() == [1.0] and bool(single["baseline"].isnan().all())
    with pytest.raises(ValueError, match="agreement needs 4 rows of >= 4 top examples"):
        agreement(axes, probe_features, top, n=4)


def test_cifar_datamodule_gives_the_same_probe_set_from_its_split_and_its_training_loader(cifar_dir) -> None:
    data = CIFARDataModule(data_dir=str(cifar_dir), download=False, batch_size=16)
    data.setup("fit")
    images, labels = data.split("train")
    from_split = ProbeSet.from_tensors(images, labels, 3, 12, data.colour)
    from_loader = ProbeSet.from_loader(data.train_dataloader(), 12, 3, data.colour)
    assert torch.equal(from_loader.indices, from_split.indices)
    assert torch.equal(from_loader.labels, labels[from_split.indices])
    assert torch.allclose(from_loader.images, from_split.images) and torch.equal(
        from_loader.rgb, from_split.rgb
    )
    assert torch.allclose(from_split.images, data.to_model_space(images[from_split.indices]), atol=1e-6)
