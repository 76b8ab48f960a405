"""Losses of DINOv2: DINO (CLS token), iBOT (masked patch tokens) and the KoLeo regulariser."""

from .dino_clstoken_loss import DINOLoss
from .ibot_patch_loss import iBOTPatchLoss
from .koleo_loss import KoLeoLoss

__all__ = ["DINOLoss", "iBOTPatchLoss", "KoLeoLoss"]
