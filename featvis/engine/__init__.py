"""The featvis visualisation engine: render images that maximise what a classifier responds to.

Pure PyTorch (no Lightning). ``render(model)`` optimises four images per class of any ``nn.Module`` classifier in
one batch, with a 1/f-scaled Fourier parameterisation in the data's decorrelated colour basis and random
per-image transforms sized for 32-px images, and returns RGB images in [0, 1]::

    from featvis.engine import render, Channel, ClassLogit

    result = render(module.net, colour=module.colour, class_names=module.class_names)
    result.rgb  # (10, 4, 3, 32, 32)
    render(net, [ClassLogit(3) - 0.5 * ClassLogit(5), Channel("group1.conv1.conv", 7)], colour=colour)
"""

from featvis.engine.hooks import LayerCapture, layer_names, preserved_modes, resolve_layer
from featvis.engine.metrics import (
    TransferAccuracy,
    feature_diversity,
    penultimate_features,
    plausibility,
    radial_log_spectrum,
    robustness,
    spectral_gap,
    transfer_accuracy,
)
from featvis.engine.objectives import (
    Activations,
    Channel,
    ClassLogit,
    Diversity,
    LayerL2,
    Neuron,
    Objective,
    Sum,
    as_objective,
    gram_matrices,
)
from featvis.engine.param import (
    ColourSquash,
    FourierImage,
    ImageParam,
    PixelImage,
    fourier_frequencies,
    fourier_scale,
    make_image_param,
)
from featvis.engine.render import NonFiniteError, RenderConfig, RenderResult, render
from featvis.engine.transforms import (
    AffineTransform,
    Compose,
    Flip,
    Jitter,
    Pad,
    Rotate,
    Scale,
    Transform,
    default_transforms,
    warp,
)

__all__ = [
    "TransferAccuracy",
    "feature_diversity",
    "penultimate_features",
    "plausibility",
    "radial_log_spectrum",
    "robustness",
    "spectral_gap",
    "transfer_accuracy",
    "Activations",
    "AffineTransform",
    "Channel",
    "ClassLogit",
    "ColourSquash",
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
    "PixelImage",
    "RenderConfig",
    "RenderResult",
    "Rotate",
    "Scale",
    "Sum",
    "Transform",
    "as_objective",
    "default_transforms",
    "fourier_frequencies",
    "fourier_scale",
    "gram_matrices",
    "layer_names",
    "make_image_param",
    "preserved_modes",
    "render",
    "resolve_layer",
    "warp",
]
