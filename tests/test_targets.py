"""featvis.targets: class names and indices, layer channels and neurons -> objectives and tags."""

from __future__ import annotations

import pytest
from helpers import TinyClassifier
from torch import nn
from torchvision.models import resnet18

from featvis.engine import Channel, ClassLogit, Neuron
from featvis.model import ClassifierModule
from featvis.targets import (
    TargetSpec,
    auto_layer,
    called_layers,
    class_index,
    image_size_of,
    resolve_layer_name,
    resolve_targets,
    unique_tags,
)

NAMES = ["red", "green", "blue"]


def test_class_index_takes_indices_names_and_digit_strings() -> None:
    assert [class_index(t, NAMES) for t in (2, "green", "0")] == [2, 1, 0]
    assert class_index(7, None) == 7  # nothing names the classes: any index is taken as it is


@pytest.mark.parametrize(
    ("target", "names", "message"),
    [
        (3, NAMES, r"class index 3 is out of range: there are 3 classes \(valid: 0\.\.2\)"),
        ("zebra", NAMES, r"unknown class 'zebra'; valid names: \['red', 'green', 'blue'\]"),
        ("zebra", None, "neither the datamodule"),
        (-1, NAMES, "class index must be an integer >= 0, got -1"),
    ],
)
def test_bad_classes_name_the_valid_ones(target, names, message) -> None:
    with pytest.raises(ValueError, match=message):
        class_index(target, names)


def test_classes_then_channels_with_one_tag_spelling() -> None:
    model = TinyClassifier()
    targets = resolve_targets(
        model, 8, classes=["blue", 0], class_names=NAMES, layer="net.conv", channels=[4]
    )
    assert [t.tag for t in targets] == ["blue", "red", "net.conv.ch4"]
    assert [t.class_index for t in targets] == [2, 0, None]
    assert isinstance(targets[0].objective, ClassLogit) and targets[0].objective.index == 2
    assert isinstance(targets[2].objective, Channel) and targets[2].objective.channel == 4
    neurons = resolve_targets(model, 8, layer="net.act", neuron=True)
    assert [t.tag for t in neurons] == [f"net.act.neuron{c}" for c in range(6)]  # first min(10, 6) channels
    assert all(isinstance(t.objective, Neuron) for t in neurons)


def test_every_class_by_default_counted_from_the_logits_without_names() -> None:
    targets = resolve_targets(TinyClassifier(num_classes=5), 8)
    assert [t.tag for t in targets] == ["0", "1", "2", "3", "4"]


def test_layer_errors_say_what_is_wrong() -> None:
    model = TinyClassifier()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match=r"channel 6 is out of range: layer 'net.conv' has 6 channels"):
        resolve_targets(model, 8, layer="net.conv", channels=[6])
    with pytest.raises(
        ValueError, match="layer 'unused' is not called by the model's forward pass; choose one of: net,"
    ):
        resolve_targets(model, 8, layer="unused")
    with pytest.raises(ValueError, match="no channel axis"):
        resolve_targets(nn.Sequential(nn.Flatten(0), nn.Linear(192, 3)), 8, layer="0")
    assert called_layers(model, 8)[:3] == ["net", "net.conv", "net.bn"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": []}, "non-empty"),
        ({"classes": "cat"}, "list"),
        ({"classes": [1.5]}, "class index must be an integer"),
        ({"channels": [1]}, "channels needs layer"),
        ({"neuron": True}, "neuron=True needs layer"),
        ({"layer": "x", "channels": [-1]}, "channel must be an integer >= 0"),
    ],
)
def test_spec_is_validated_when_made(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TargetSpec(**kwargs)


def test_tags_are_safe_unique_and_not_reserved() -> None:
    assert unique_tags(["a b", "a b", "all", "timeline", "x/y"]) == [
        "a_b",
        "a_b_2",
        "all_",
        "timeline_",
        "x_y",
    ]


def test_image_size_from_the_first_source_that_declares_one() -> None:
    class Data:
        image_size = 24

    model = TinyClassifier()
    assert image_size_of(None, model) is None
    assert image_size_of(Data(), model) == 24
    model.example_input_array = __import__("torch").zeros(1, 3, 12, 12)
    assert image_size_of(None, model) == 12


def test_layer_auto_is_the_last_spatial_block_of_the_default_model_and_of_a_resnet() -> None:
    default = ClassifierModule()
    # SpeedNet: group3 (and its last conv block) give 256 x 3 x 3 maps at 32 px, then a global max-pool.
    assert auto_layer(default, 32) == "net.group3"
    assert auto_layer(ClassifierModule(network="small_cnn"), 32) == "net.relu3"
    resnet = resnet18(num_classes=10)
    assert auto_layer(resnet, 64) == "layer4"  # 2 x 2 maps
    assert auto_layer(resnet, 32) == "layer3"  # layer4's maps are 1 x 1 at 32 px: no longer spatial
    targets = resolve_targets(default, 32, layer="auto", channels=[0, 255])
    assert [t.tag for t in targets] == ["net.group3.ch0", "net.group3.ch255"]
    assert [t.objective.layer for t in targets] == ["net.group3", "net.group3"]  # type: ignore[attr-defined]
    assert TargetSpec(layer="auto", channels=[1]).resolve(TinyClassifier(), 8, None)[0].tag == "net.drop.ch1"
    assert resolve_layer_name(default, "net.group2", 32) == "net.group2"


def test_layer_auto_without_spatial_layers_and_unknown_layers_name_the_choices() -> None:
    flat = nn.Sequential(nn.Flatten(), nn.Linear(192, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(
        ValueError,
        match="layer: auto found no layer with spatial .* name a layer instead, one of: 0, 1, 2, 3",
    ):
        auto_layer(flat, 8)
    with pytest.raises(
        ValueError, match=r"unknown layer 'net.cnv' in TinyClassifier; closest valid names: \['net.conv'"
    ):
        resolve_targets(TinyClassifier(), 8, layer="net.cnv")
    with pytest.raises(ValueError, match=r"closest valid names: \['net.group3'"):
        resolve_layer_name(ClassifierModule(), "net.grup3", 32)
