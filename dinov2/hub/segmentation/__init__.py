"""mmseg-free linear segmentation heads used by the hub segmenters (``dinov2_vit*14_ls``)."""

from .colormaps import colorize, get_class_names, get_palette
from .decode_heads import BNHead
from .encoder_decoder import SegmentationEncoderDecoder

__all__ = ["BNHead", "SegmentationEncoderDecoder", "colorize", "get_class_names", "get_palette"]
