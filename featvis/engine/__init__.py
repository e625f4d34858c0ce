"""The featvis visualisation engine: render images that maximise what a classifier responds to.

Pure PyTorch (no Lightning). ``render(model)`` optimises four images per class of any ``nn.Module`` classifier in
one batch, with a 1/f-scaled Fourier parameterisation in the data's decorrelated colour basis, random
per-image transforms sized for the image and a prior towards the data's colours, and returns RGB images in [0, 1]::

    from featvis.engine import Channel, ClassLogit, RenderConfig, render

    result = render(module.net, colour=module.colour, class_names=module.class_names)
    result.rgb  # (10, 4, 3, 32, 32)
    config = RenderConfig(steps=64, images_per_target=2)
    render(net, [ClassLogit(3) - 0.5 * ClassLogit(5), Channel("group1.conv1.conv", 7)], config=config)

Settings live in one :class:`RenderConfig`; keyword overrides such as ``render(net, steps=32)`` replace single
fields. Quality metrics of rendered images are in :mod:`featvis.quality`.
"""

from featvis.engine.config import RenderConfig, resolve_autocast
from featvis.engine.hooks import (
    LayerCapture,
    device_and_dtype,
    fork_rng,
    layer_names,
    preserved_modes,
    resolve_layer,
)
from featvis.engine.objectives import (
    Activations,
    Channel,
    ClassLogit,
    Diversity,
    LayerL2,
    Neuron,
    Objective,
    as_objective,
    class_names_of,
)
from featvis.engine.param import (
    FourierImage,
    ImageParam,
    PhaseImage,
    PixelImage,
    make_image_param,
)
from featvis.engine.render import NonFiniteError, RenderResult, render
from featvis.engine.spectrum import amplitude_spectra, data_scale
from featvis.engine.transforms import Compose, Flip, Jitter, Pad, Rotate, Scale, Transform, default_transforms

__all__ = [
    "Activations",
    "Channel",
    "ClassLogit",
    "Compose",
    "Diversity",
    "Flip",
    "FourierImage",
    "ImageParam",
    "Jitter",
    "LayerCapture",
    "LayerL2",
    "Neuron",
    "NonFiniteError",
    "Objective",
    "Pad",
    "PhaseImage",
    "PixelImage",
    "RenderConfig",
    "RenderResult",
    "Rotate",
    "Scale",
    "Transform",
    "amplitude_spectra",
    "data_scale",
    "as_objective",
    "class_names_of",
    "default_transforms",
    "device_and_dtype",
    "fork_rng",
    "layer_names",
    "make_image_param",
    "preserved_modes",
    "render",
    "resolve_autocast",
    "resolve_layer",
]
