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
from dinov2.hub.classifiers import (
    dinov2_vitb14_lc,
    dinov2_vitb14_reg_lc,
    dinov2_vitg14_lc,
    dinov2_vitg14_reg_lc,
    dinov2_vitl14_lc,
    dinov2_vitl14_reg_lc,
    dinov2_vits14_lc,
    dinov2_vits14_reg_lc,
)
from dinov2.hub.depthers import (
    dinov2_vitb14_dd,
    dinov2_vitb14_ld,
    dinov2_vitb14_reg_dd,
    dinov2_vitb14_reg_ld,
    dinov2_vitg14_dd,
    dinov2_vitg14_ld,
    dinov2_vitg14_reg_dd,
    dinov2_vitg14_reg_ld,
    dinov2_vitl14_dd,
    dinov2_vitl14_ld,
    dinov2_vitl14_reg_dd,
    dinov2_vitl14_reg_ld,
    dinov2_vits14_dd,
    dinov2_vits14_ld,
    dinov2_vits14_reg_dd,
    dinov2_vits14_reg_ld,
)
from dinov2.hub.segmenters import dinov2_vitb14_ls, dinov2_vitg14_ls, dinov2_vitl14_ls, dinov2_vits14_ls

dependencies = ["torch"]
