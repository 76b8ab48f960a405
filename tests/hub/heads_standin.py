"""A tiny stand-in for DinoVisionTransformer with the interface the hub heads use, and checkpoint helpers."""

import json
from pathlib import Path

import torch
from torch import nn


class TinyBackbone(nn.Module):
    """Patch embedding + ``depth`` residual MLP blocks + final LayerNorm, with the ViT's feature API.

    It refuses inputs whose sides are not multiples of ``patch_size`` (like the real PatchEmbed), so callers
    must pad, and it counts its forward passes.
    """

    def __init__(self, embed_dim: int = 8, depth: int = 12, patch_size: int = 14) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.n_blocks = depth
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU()) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.calls = 0
        self.input_shapes: list[tuple[int, ...]] = []

    def _tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        H, W = x.shape[2:]
        if H % self.patch_size or W % self.patch_size:
            raise AssertionError(f"input {H}x{W} is not a multiple of the patch size {self.patch_size}")
        self.calls += 1
        self.input_shapes.append(tuple(x.shape))
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], dim=1)  # [B, 1 + N, D]
        outputs = []
        for block in self.blocks:
            tokens = tokens + block(tokens)
            outputs.append(tokens)
        return outputs

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        last = self.norm(self._tokens(x)[-1])
        return {"x_norm_clstoken": last[:, 0], "x_norm_patchtokens": last[:, 1:]}

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        outputs = self._tokens(x)
        indices = range(len(outputs) - n, len(outputs)) if isinstance(n, int) else n
        selected = [self.norm(outputs[i]) if norm else outputs[i] for i in indices]
        B, h, w = x.shape[0], x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        cls_tokens = [out[:, 0] for out in selected]
        patches = [out[:, 1:] for out in selected]
        if reshape:
            patches = [p.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, cls_tokens))
        return tuple(patches)


CHECKPOINT_KEYS = Path(__file__).resolve().parents[1] / "data" / "checkpoint_keys"


def released_backbone_shapes(name: str) -> dict[str, list[int]]:
    """Keys and shapes of a released backbone checkpoint (``dinov2_vits14``, ``dinov2_vitg14_reg``, ...)."""
    shapes = {}
    for line in (CHECKPOINT_KEYS / f"{name}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            shapes[key] = json.loads(shape.rsplit(" ", 1)[0])
    return shapes


def prefixed_shapes(model: nn.Module, prefix: str) -> dict[str, list[int]]:
    """``{key without prefix: shape}`` of the state-dict entries under ``prefix``."""
    return {k[len(prefix) :]: list(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)}


def perturbed_state_dict(model: nn.Module, *, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict with the model's keys and values no fresh build would have (to prove they were loaded)."""
    out = {}
    for key, value in model.state_dict().items():
        new = value.clone() if not value.is_floating_point() else torch.randn_like(value) + 3.0
        out[prefix + key] = new
    return out


def write_backbone_checkpoint(checkpoint_dir: Path, model_name: str, full_name: str) -> dict[str, torch.Tensor]:
    """Save a random backbone under its official file name in a torch.hub checkpoint folder."""
    from dinov2.hub import backbones

    model = getattr(backbones, model_name)(pretrained=False)
    state_dict = perturbed_state_dict(model)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, checkpoint_dir / f"{full_name}_pretrain.pth")
    return state_dict


def assert_state_dict_equal(module: nn.Module, expected: dict[str, torch.Tensor], *, prefix: str = "") -> None:
    actual = module.state_dict()
    assert sorted(actual) == sorted(k[len(prefix) :] for k in expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key[len(prefix) :]], value, rtol=0, atol=0)
