"""Quality of feature visualisations: pure metric functions and the one routine that applies them.

Pure PyTorch (no Lightning). :mod:`featvis.quality.metrics` holds the metrics, each a function of RGB images in
[0, 1]; :func:`score_render` (in :mod:`featvis.quality.report`) scores a render with every metric its inputs
allow, and is what the callback, ``featvis render --metrics`` and the benchmarks call.
"""

from featvis.quality.features import (
    confidence_frontier,
    feature_diversity,
    penultimate_features,
    plausibility,
    plausibility_from_features,
)
from featvis.quality.metrics import (
    TransferAccuracy,
    colour_distance,
    radial_log_spectrum,
    random_affine,
    robustness,
    spectral_gap,
    transfer_accuracy,
)
from featvis.quality.report import QualityReport, RGBInput, reference_spectrum, score_render

__all__ = [
    "QualityReport",
    "RGBInput",
    "TransferAccuracy",
    "colour_distance",
    "confidence_frontier",
    "feature_diversity",
    "penultimate_features",
    "plausibility",
    "plausibility_from_features",
    "radial_log_spectrum",
    "random_affine",
    "reference_spectrum",
    "robustness",
    "score_render",
    "spectral_gap",
    "transfer_accuracy",
]
