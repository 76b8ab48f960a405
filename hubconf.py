# torch.hub entry module: `torch.hub.load("<repo or checkout>", "dinov2_vits14")`.
from dinov2.hub.backbones import (
    dinov2_vitb14,
    dinov2_vitb14_reg,
    dinov2_vitg14,
    dinov2_vitg14_reg,
    dinov2_vitl14,
    dinov2_vitl14_reg,
    dinov2_vits14,
    dinov2_vits14_reg,
)

dependencies = ["torch"]
