"""DINOv2: self-supervised pretraining of Vision Transformers (DINO + iBOT + KoLeo)."""

__version__ = "0.0.1"
