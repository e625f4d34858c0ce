"""featvis: watch what an image classifier learns while it trains."""

from featvis.callback import FeatureVisCallback
from featvis.colour import ColourTransform, InputConvention
from featvis.data import CIFARDataModule
from featvis.engine import RenderConfig
from featvis.hidden import SheetConfig
from featvis.model import ClassifierModule

__all__ = [
    "CIFARDataModule",
    "ClassifierModule",
    "ColourTransform",
    "FeatureVisCallback",
    "InputConvention",
    "RenderConfig",
    "SheetConfig",
]
__version__ = "0.1.0"
