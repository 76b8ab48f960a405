"""mmcv-free depth heads used by the hub depthers (``dinov2_vit*14_ld`` / ``_dd``)."""

from .decode_heads import BNHead, DPTHead
from .encoder_decoder import DepthEncoderDecoder

__all__ = ["BNHead", "DPTHead", "DepthEncoderDecoder"]
