"""featvis.warm: the measure a warm start checks its last images with."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from featvis.colour import ColourTransform
from featvis.warm import unit_measure


def _identity_net() -> nn.Sequential:
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    return nn.Sequential(OrderedDict(conv=conv, pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))


def _flat_images() -> torch.Tensor:
    # Two images whose channels are constant: image 0 is (0.1, 0.2, 0.3), image 1 is (0.6, 0.5, 0.4).
    colours = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.5, 0.4]])
    return colours.view(2, 3, 1, 1).expand(2, 3, 8, 8).clone()


def test_unit_measure_reads_each_image_on_its_own_channel():
    measure = unit_measure(_identity_net(), None, ["conv"], {"conv": [2, 0]}, images=1, neuron=False)
    values = measure(_flat_images())
    # image 0 is read on channel 2, image 1 on channel 0
    assert torch.allclose(values, torch.tensor([0.3, 0.6]))


def test_unit_measure_maps_colours_through_the_input_space():
    colour = ColourTransform([0.5, 0.5, 0.5], torch.eye(3) * 2)  # model space = 2 * (rgb - 0.5)
    measure = unit_measure(_identity_net(), colour, ["conv"], {"conv": [2, 0]}, images=1, neuron=False)
    assert torch.allclose(measure(_flat_images()), torch.tensor([-0.4, 0.2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_unit_measure_takes_cpu_images_for_a_cuda_model():
    # WarmStart keeps its images on the CPU; the model and its input space live on the GPU. This failed with
    # "Expected all tensors to be on the same device" in the channel sheets of `featvis fit` on CUDA.
    colour = ColourTransform([0.5, 0.5, 0.5], torch.eye(3) * 2).to("cuda")
    net = _identity_net().to("cuda")
    measure = unit_measure(net, colour, ["conv"], {"conv": [2, 0]}, images=1, neuron=False)
    assert torch.allclose(measure(_flat_images()).cpu(), torch.tensor([-0.4, 0.2]), atol=1e-3)
