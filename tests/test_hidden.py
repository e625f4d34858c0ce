"""featvis.hidden: channel sheets of a run, validated once, rendered in one batch, fixed across epochs and resumes."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from helpers import FAST, TinyClassifier
from torch import nn
from torch.utils.data import DataLoader

from featvis.hidden import ChannelSheets, SheetConfig
from featvis.probe import ProbeSet


def _model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()


def _probe(model: TinyClassifier, seed: int = 0) -> ProbeSet:
    data = model._data(0)
    return ProbeSet.from_tensors(data.tensors[0], data.tensors[1], seed, 30, model.colour)


class _Data:
    """A datamodule-like source: uint8 training images and labels behind ``split("train")``."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, 3, (50,), generator=generator)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        assert name == "train"
        return self.images, self.labels


def _brute_means(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    outputs = []
    handle = layer.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach()))
    training = model.training
    model.eval()
    with torch.no_grad():
        model(images)
    model.train(training)
    handle.remove()
    return outputs[0].mean(dim=(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": []}, "layers must be 'auto' or a non-empty list of layer names"),
        ({"layers": ["net.conv", ""]}, "layers must be"),
        ({"channels": []}, "channels must be a non-empty list"),
        ({"channels": [1, -2]}, "channel must be an integer >= 0, got -2"),
        ({"k": 0}, "k must be an integer >= 1"),
        ({"examples": 0}, "examples must be an integer >= 1"),
        ({"probe_size": 4, "examples": 6}, "probe_size=4 is smaller than examples=6"),
        ({"rule": "entropy"}, "rule must be one of 'selectivity', 'kurtosis', 'variance', 'change'"),
        ({"images_per_channel": 0}, "images_per_channel must be an integer >= 1"),
        ({"neuron": "yes"}, "neuron must be True or False"),
    ],
)
def test_sheet_config_is_validated_when_made(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        SheetConfig(**kwargs)


def test_check_resolves_auto_and_names_the_fix_for_bad_layers() -> None:
    model = _model()
    assert ChannelSheets(SheetConfig(layers=["net.conv", "auto"], k=3)).check(model, 8) == [
        "net.conv",
        "net.drop",
    ]
    assert SheetConfig(layers="net.conv").layers == ("net.conv",)
    cases = [
        (
            SheetConfig(layers=["net.cnv"]),
            r"unknown layer 'net.cnv' in TinyClassifier; closest valid names: \['net.conv'",
        ),
        (
            SheetConfig(layers=["net.conv"], k=7),
            "k=7 channels asked of layer 'net.conv', which has 6; set k <= 6",
        ),
        (
            SheetConfig(layers=["net.conv"], channels=[2, 6]),
            "channel 6 is out of range: layer 'net.conv' has 6 channels",
        ),
        (
            SheetConfig(layers=["net.head"], k=2, neuron=True),
            "neuron objectives need a layer with \\(N, C, H, W\\)",
        ),
    ]
    for config, message in cases:
        with pytest.raises(ValueError, match=message):
            ChannelSheets(config).check(model, 8)
    flat = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(3, 2, 1), flat=nn.Flatten(0), head=nn.Unflatten(0, (1, 128)))
    )
    with pytest.raises(
        ValueError, match="'flat' outputs shape \\(128,\\), which has no channel axis; choose a layer"
    ):
        ChannelSheets(SheetConfig(layers=["flat"], k=1)).check(flat, 8)


def test_render_shows_the_most_selective_channels_beside_their_true_top_examples() -> None:
    model = _model()
    probe = _probe(model)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    batches: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    sheets = ChannelSheets(SheetConfig(layers=["net.conv", "net.act"], k=3, examples=4, images_per_channel=2))
    sheets.setup(model, probe, model.colour, seed=0, size=8)

    out = sheets.render(model, model.colour, None, FAST, scale=2)

    assert list(out) == ["net.conv", "net.act"]
    assert batches.count(12) >= FAST.steps  # both layers' 3 channels x 2 images: one engine batch
    assert all(torch.equal(p, params[name]) for name, p in model.named_parameters())
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    for layer, module in (("net.conv", model.net.conv), ("net.act", model.net.act)):
        info = out[layer]
        means = _brute_means(model, module, probe.images)
        median = means.median(dim=0).values  # the lower middle value of 30
        fourth = means.sort(dim=0, descending=True).values[3]  # the weakest of 4 examples
        selectivity = (fourth - median) / (means - median).abs().median(dim=0).values
        assert info["channels"] == sorted(range(6), key=lambda c: -float(selectivity[c]))[:3]
        assert info["tags"] == [f"{layer}.ch{c}" for c in info["channels"]]
        assert info["rgb"].shape == (3, 2, 3, 8, 8) and info["values"].shape == (3, 2)
        assert float(info["rgb"].min()) >= 0 and float(info["rgb"].max()) <= 1
        for row, channel in enumerate(info["channels"]):
            ranked = sorted(range(30), key=lambda i: (-float(means[i, channel]), i))[:4]
            assert info["example_indices"][row].tolist() == ranked
            assert torch.allclose(info["example_values"][row], means[ranked, channel], atol=1e-5)
            assert torch.equal(info["examples"][row], probe.rgb[ranked])
            assert info["dataset_indices"][row].tolist() == probe.indices[ranked].tolist()
            labels = probe.labels[ranked].tolist()
            assert float(info["purity"][row]) == pytest.approx(max(map(labels.count, labels)) / 4)
        assert info["sheet"].shape[0] == 3 and info["sheet"].shape[1] > 3 * 16
        assert sheets.purity()[layer] == pytest.approx(float(info["purity"].mean()))
        assert info["seconds"] > 0


def test_automatic_choice_stays_fixed_while_the_change_rule_follows_the_model() -> None:
    model = _model()
    fixed = ChannelSheets(SheetConfig(layers=["net.conv"], k=2, examples=3))
    moving = ChannelSheets(SheetConfig(layers=["net.conv"], k=2, examples=3, rule="change"))
    for sheets in (fixed, moving):
        sheets.setup(model, _probe(model), model.colour, seed=0, size=8)
    config = FAST.replace(steps=1)
    provisional = fixed.render(model, model.colour, None, config, scale=1, keep=False)["net.conv"]["channels"]
    assert fixed.channels == {} and fixed.state_dict()["sheets_channels"] == {}
    first = fixed.render(model, model.colour, None, config, scale=1)["net.conv"]["channels"]
    assert first == provisional and fixed.channels == {"net.conv": first}
    assert (
        moving.render(model, model.colour, None, config, scale=1)["net.conv"]["channels"] == first
    )  # no previous yet
    with torch.no_grad():  # channel 5 now responds to other images; the chosen ones only get louder
        model.net.conv.weight[5] = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(9))
        model.net.conv.weight[first] *= 3
    assert fixed.render(model, model.colour, None, config, scale=1)["net.conv"]["channels"] == first
    assert moving.render(model, model.colour, None, config, scale=1)["net.conv"]["channels"][0] == 5
    assert fixed.state_dict().keys() == {"sheets_channels", "sheets_probe_indices"}
    assert moving.state_dict()["sheets_previous"]["net.conv"].shape == (30, 6)


def test_a_resumed_run_reads_the_same_probe_images_and_keeps_its_channels() -> None:
    model = _model()
    data = _Data()
    first = ChannelSheets(SheetConfig(layers=["auto"], k=2, examples=3, probe_size=20))
    first.setup(model, data, model.colour, seed=1, size=8)
    before = first.render(model, model.colour, None, FAST.replace(steps=1), scale=1)["net.drop"]
    state = first.state_dict()

    with torch.no_grad():  # training went on: the variances differ now
        model.net.conv.weight.mul_(torch.linspace(0.1, 3, 6).view(6, 1, 1, 1))
    resumed = ChannelSheets(SheetConfig(layers=["auto"], k=2, examples=3, probe_size=20))
    resumed.load_state_dict(state)
    resumed.setup(model, data, model.colour, seed=2, size=8)  # another seed: the saved indices win
    assert resumed.probe is not None and torch.equal(resumed.probe.indices, first.probe.indices)
    assert torch.equal(resumed.probe.images, first.probe.images)
    after = resumed.render(model, model.colour, None, FAST.replace(steps=1), scale=1)["net.drop"]
    assert after["channels"] == before["channels"]

    # Lightning may restore the state after setup: the next render reads the saved images again.
    loader = DataLoader(
        torch.utils.data.TensorDataset(model.colour.to_model(data.images.float() / 255)), batch_size=8
    )
    late = ChannelSheets(SheetConfig(layers=["auto"], k=2, examples=3, probe_size=20))
    late.setup(model, loader, model.colour, seed=5, size=8)
    assert not torch.equal(late.probe.indices, first.probe.indices)
    late.load_state_dict(state)
    late.render(model, model.colour, None, FAST.replace(steps=1), scale=1)
    assert torch.equal(late.probe.indices, first.probe.indices)
    assert torch.allclose(late.probe.images, first.probe.images, atol=1e-6)


def test_render_before_setup_and_unreadable_sources_fail_clearly() -> None:
    model = _model()
    with pytest.raises(RuntimeError, match="needs setup"):
        ChannelSheets().render(model, model.colour)
    with pytest.raises(ValueError, match="cannot read probe images from a list"):
        ChannelSheets(SheetConfig(layers=["net.conv"], k=2)).setup(model, [1, 2], model.colour, 0, 8)
    with pytest.raises(ValueError, match="the probe set has 30 images, fewer than examples=40"):
        ChannelSheets(SheetConfig(layers=["net.conv"], k=2, examples=40, probe_size=64)).setup(
            model, _probe(model), model.colour, 0, 8
        )


def test_neuron_sheets_rank_examples_by_the_centre_neuron() -> None:
    model = _model()
    probe = _probe(model)
    sheets = ChannelSheets(SheetConfig(layers=["net.conv"], channels=[4, 1], examples=3, neuron=True))
    sheets.setup(model, probe, model.colour, seed=0, size=8)
    info = sheets.render(model, model.colour, None, FAST.replace(steps=1), scale=1)["net.conv"]
    outputs: list[torch.Tensor] = []
    model.net.conv.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach()))
    model.eval()
    with torch.no_grad():
        model(probe.images)
    centre = outputs[-1][:, :, 4, 4]
    assert info["tags"] == ["net.conv.neuron4", "net.conv.neuron1"]
    for row, channel in enumerate([4, 1]):
        ranked = sorted(range(30), key=lambda i: (-float(centre[i, channel]), i))[:3]
        assert info["example_indices"][row].tolist() == ranked
        assert torch.allclose(info["example_values"][row], centre[ranked, channel], atol=1e-5)
