"""Pictures of what a backbone sees: PCA of the patch features (3 components as RGB) and last-layer attention.

    python -m dinov2.tools.visualize --weights dinov2_vits14 --image photo.jpg --out pictures/
    python -m dinov2.tools.visualize --weights OUT/eval/training_999/teacher_checkpoint.pth --image a.png b.png \\
        --out pictures/

``--weights`` is a hub entrypoint name (its released weights: from torch.hub's cache, else downloaded) or a
teacher checkpoint exported by training (the model is rebuilt from the ``backbone_args`` it carries). One PNG per
image: the input, the PCA picture, the CLS token's attention to the patches averaged over heads, then per head.
The PCA is fitted on the patches of all the given images together, so colours mean the same across pictures.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dinov2.data.transforms import make_normalize_transform
from dinov2.errors import MissingPathError, WeightsError
from dinov2.models import build_model_from_backbone_args
from dinov2.models.weights import load_pretrained_weights, load_state_dict_from_url_or_path
from dinov2.utils.cli import run_cli

__all__ = ["attention_maps", "load_backbone", "main", "pca_pictures", "picture_row"]

logger = logging.getLogger("dinov2")

_TILE = 224  # pixels per picture in the output row


def load_backbone(weights: str) -> nn.Module:
    """A hub entrypoint by name (``dinov2_vits14``, ...), or the backbone of a teacher export, in eval mode."""
    import dinov2.hub.backbones as hub_backbones

    if weights in hub_backbones.__all__ and weights != "Weights":
        return getattr(hub_backbones, weights)().eval()
    if not Path(weights).is_file():
        names = ", ".join(name for name in hub_backbones.__all__ if name != "Weights")
        raise MissingPathError(f"--weights {weights!r} is neither a file nor a hub backbone name ({names})")
    checkpoint = load_state_dict_from_url_or_path(weights)
    args = checkpoint.get("backbone_args")
    if not isinstance(args, dict):
        raise WeightsError(
            f"{weights} carries no backbone_args (an export from before they were recorded, or not a teacher "
            "export): load it with torch.hub.load(..., weights=<file>, <the training's student.* values>) instead"
        )
    model = build_model_from_backbone_args(args)
    load_pretrained_weights(model, checkpoint, checkpoint_key="teacher", name=weights)
    return model.eval()


def _prepare(image: Image.Image, size: int, patch_size: int) -> torch.Tensor:
    """RGB, resized so the shorter side is ``size`` and both sides are patch multiples; normalised [3, H, W]."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = (max(patch_size, round(side * scale / patch_size) * patch_size) for side in image.size)
    array = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # [3, H, W]
    return make_normalize_transform()(tensor)


@torch.no_grad()
def pca_pictures(patch_features: list[torch.Tensor]) -> list[np.ndarray]:
    """Each ``[h, w, D]`` patch map as an ``[h, w, 3]`` uint8 picture of its first 3 principal components (fitted
    on all maps together; each component min-max scaled to 0-255)."""
    flat = torch.cat([features.reshape(-1, features.shape[-1]) for features in patch_features]).float()  # [P, D]
    centered = flat - flat.mean(dim=0, keepdim=True)
    _, _, v = torch.pca_lowrank(centered, q=3, center=False)  # v: [D, 3]
    projected = centered @ v  # [P, 3]
    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    scaled = ((projected - low) / (high - low).clamp_min(1e-8) * 255).round().to(torch.uint8)  # [P, 3]
    pictures, start = [], 0
    for features in patch_features:
        h, w = features.shape[:2]
        pictures.append(scaled[start : start + h * w].reshape(h, w, 3).numpy())
        start += h * w
    return pictures


@torch.no_grad()
def attention_maps(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The CLS token's last-layer attention to each patch, ``[heads, h, w]`` (registers left out)."""
    attention = model.get_last_selfattention(image[None])[0]  # [heads, T, T]
    h, w = image.shape[-2] // model.patch_size, image.shape[-1] // model.patch_size
    first_patch = 1 + model.num_register_tokens
    return attention[:, 0, first_patch:].reshape(-1, h, w)


def _heat(values: torch.Tensor) -> np.ndarray:
    """[h, w] -> [h, w, 3] uint8, min-max scaled, black-red-yellow-white."""
    v = values.float()
    v = ((v - v.min()) / (v.max() - v.min()).clamp_min(1e-8)).numpy()
    return (np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1) * 255).astype(
        np.uint8
    )


def _tile(array: np.ndarray, resample: int = Image.NEAREST) -> Image.Image:
    picture = Image.fromarray(array)
    scale = _TILE / max(picture.size)
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), resample)


def picture_row(image: Image.Image, pca: np.ndarray, attention: torch.Tensor) -> Image.Image:
    """One row: input | PCA | mean attention | attention of each head."""
    tiles = [_tile(np.asarray(image.convert("RGB")), Image.BICUBIC), _tile(pca), _tile(_heat(attention.mean(0)))]
    tiles += [_tile(_heat(head)) for head in attention]
    row = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        row.paste(tile, (x, 0))
        x += tile.width + 4
    return row


def visualize(model: nn.Module, images: list[Image.Image], size: int) -> list[Image.Image]:
    """One picture row per image (see :func:`picture_row`)."""
    tensors = [_prepare(image, size, model.patch_size) for image in images]
    with torch.no_grad():
        patch_maps = []
        for tensor in tensors:
            tokens = model.forward_features(tensor[None])["x_norm_patchtokens"][0]  # [h*w, D]
            h, w = tensor.shape[-2] // model.patch_size, tensor.shape[-1] // model.patch_size
            patch_maps.append(tokens.reshape(h, w, -1))
    pcas = pca_pictures(patch_maps)
    return [picture_row(image, pca, attention_maps(model, tensor)) for image, pca, tensor in zip(images, pcas, tensors)]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="hub backbone name (dinov2_vits14, ...) or teacher export")
    parser.add_argument("--image", nargs="+", required=True, help="image files")
    parser.add_argument("--out", required=True, help="output folder (one <image name>_features.png per image)")
    parser.add_argument(
        "--size", type=int, default=None, help="shorter side fed to the model (default: the model's img_size)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(get_args_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_backbone(args.weights)
    size = args.size or int(model.patch_embed.img_size[0])
    images = [Image.open(path) for path in args.image]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path, row in zip(args.image, visualize(model, images, size)):
        target = out / f"{Path(path).stem}_features.png"
        row.save(target)
        print(target)
    return 0


if __name__ == "__main__":
    run_cli(run, get_args_parser())
