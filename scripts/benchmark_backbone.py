"""Forward throughput of our DINOv2 backbones against timm's and Hugging Face's implementations of the same models.

For each architecture (ViT-S/14, ViT-B/14), input size and precision (fp32, bf16 autocast), three models of the
same size are built with random weights: ours (the hub builder with ``pretrained=False``), timm's
``vit_{small,base}_patch14_dinov2`` and ``transformers.Dinov2Model`` (SDPA attention). All three get position
embeddings made for the input size (so none interpolates) and our weights are copied into the peers, whose outputs
are checked to match ours before timing: the three compute the same function. The models are timed in alternating
trials (the order rotates every trial) under ``torch.inference_mode``; each trial times ``--iters`` forwards after
``--warmup`` untimed ones. Reported: images/s of each (best trial; noise on a shared machine only slows things
down, ``--stat median`` reports the median instead), ours / each peer and ours / the faster peer. Usage::

    pip install -e ".[bench]"   # timm and transformers
    python scripts/benchmark_backbone.py --sizes 224 518 --dtypes fp32 bf16 --batch-size 8
"""

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dinov2.hub import backbones

# arch -> (hub entrypoint, timm model name, (hidden size, heads)); all are 12 blocks deep with patch 14.
ARCHS: dict[str, tuple[Callable[..., nn.Module], str, tuple[int, int]]] = {
    "vits14": (backbones.dinov2_vits14, "vit_small_patch14_dinov2", (384, 6)),
    "vitb14": (backbones.dinov2_vitb14, "vit_base_patch14_dinov2", (768, 12)),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
DEPTH = 12
PEERS = ("timm", "hf")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=["vits14", "vitb14"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 518], help="square input sizes in pixels")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3, help="timed forwards per trial")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards before each trial")
    parser.add_argument("--trials", type=int, default=5, help="alternating trials per model")
    parser.add_argument("--stat", choices=["best", "median"], default="best", help="trial statistic reported")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser


def _import_peers() -> tuple[object, object]:
    try:
        import timm
        import transformers
    except ImportError as error:
        raise SystemExit(
            f"the benchmark compares against timm and transformers, which are not installed ({error}); "
            'install them with `pip install -e ".[bench]"`'
        ) from error
    return timm, transformers


def hf_state_dict(ours: dict[str, Tensor], hf_keys: set[str], depth: int) -> dict[str, Tensor]:
    """Our state dict under Hugging Face ``Dinov2Model`` names (fused ``qkv`` split into q, k, v).

    transformers >= 5 names the attention Linears ``attention.{q,k,v,o}_proj``; older releases
    ``attention.attention.{query,key,value}`` and ``attention.output.dense``.
    """
    if "encoder.layer.0.attention.q_proj.weight" in hf_keys:
        q, k, v, o = (f"attention.{name}" for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    else:
        q, k, v = (f"attention.attention.{name}" for name in ("query", "key", "value"))
        o = "attention.output.dense"
    out = {
        "embeddings.cls_token": ours["cls_token"],
        "embeddings.mask_token": ours["mask_token"],
        "embeddings.position_embeddings": ours["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": ours["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": ours["patch_embed.proj.bias"],
        "layernorm.weight": ours["norm.weight"],
        "layernorm.bias": ours["norm.bias"],
    }
    same = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "attn.proj": o}
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for param in ("weight", "bias"):
            for ours_name, hf_name in same.items():
                out[f"{dst}{hf_name}.{param}"] = ours[f"{src}{ours_name}.{param}"]
            for hf_name, part in zip((q, k, v), ours[f"{src}attn.qkv.{param}"].chunk(3)):  # [3D, ...] -> [D, ...]
                out[f"{dst}{hf_name}.{param}"] = part
        out[f"{dst}layer_scale1.lambda1"] = ours[f"{src}ls1.gamma"]
        out[f"{dst}layer_scale2.lambda1"] = ours[f"{src}ls2.gamma"]
    return out


def build_models(arch: str, size: int, device: torch.device) -> dict[str, Callable[[Tensor], Tensor]]:
    """Ours, timm and HF for ``arch`` with position embeddings for ``size``; each maps images to the normed CLS."""
    timm, transformers = _import_peers()
    hub_entrypoint, timm_name, (hidden, heads) = ARCHS[arch]
    ours = hub_entrypoint(pretrained=False, img_size=size).to(device).eval()
    state = ours.state_dict()

    timm_model = timm.create_model(timm_name, pretrained=False, img_size=size, num_classes=0)
    timm_model.load_state_dict({k: v for k, v in state.items() if k != "mask_token"})
    timm_model.to(device).eval()

    config = transformers.Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=DEPTH,
        num_attention_heads=heads,
        mlp_ratio=4,
        image_size=size,
        patch_size=14,
        layerscale_value=1.0,
        attn_implementation="sdpa",
    )
    hf_model = transformers.Dinov2Model(config)
    hf_model.load_state_dict(hf_state_dict(state, set(hf_model.state_dict()), DEPTH))
    hf_model.to(device).eval()

    return {
        "ours": ours,
        "timm": timm_model,
        "hf": lambda x: hf_model(pixel_values=x).pooler_output,
    }


def check_same_outputs(models: dict[str, Callable[[Tensor], Tensor]], x: Tensor) -> None:
    """The peers must compute our function (same weights, fp32); otherwise the comparison would be meaningless."""
    with torch.inference_mode():
        outputs = {name: model(x[:2]) for name, model in models.items()}
    for name in PEERS:
        error = (outputs[name] - outputs["ours"]).abs().max().item()
        if error > 1e-3:
            raise RuntimeError(f"{name} output differs from ours by {error:.2e} with the same weights")


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def time_forward(
    model: Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype | None, iters: int, warmup: int
) -> float:
    """Images/s over ``iters`` forwards after ``warmup`` untimed ones; autocast is entered per forward, as in a
    typical inference loop (so bf16 weight casts are part of every forward, for every model)."""

    def forward() -> None:
        autocast = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            model(x)

    for _ in range(warmup):
        forward()
    _synchronize(x.device)
    start = time.perf_counter()
    for _ in range(iters):
        forward()
    _synchronize(x.device)
    return iters * x.shape[0] / (time.perf_counter() - start)


def measure(
    models: dict[str, Callable[[Tensor], Tensor]], x: Tensor, dtype: torch.dtype | None, args: argparse.Namespace
) -> dict[str, float]:
    """Images/s of every model: trials alternate between the models, starting with a different one each time."""
    names = list(models)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for trial in range(args.trials):
        for name in names[trial % len(names) :] + names[: trial % len(names)]:
            rates[name].append(time_forward(models[name], x, dtype, args.iters, args.warmup))
    reduce = max if args.stat == "best" else statistics.median
    return {name: reduce(values) for name, values in rates.items()}


def check_args(args: argparse.Namespace) -> None:
    """Sizes must be whole patch grids (the peers refuse others) and counts positive."""
    bad_sizes = [size for size in args.sizes if size < 14 or size % 14]
    if bad_sizes:
        raise ValueError(f"--sizes {bad_sizes}: use positive multiples of the patch size 14, e.g. 224 or 518")
    for name in ("batch_size", "iters", "trials"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    print(
        f"forward images/s, batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads, "
        f"{args.stat} of {args.trials} trials x {args.iters} iters, torch {torch.__version__}"
    )
    print(
        f"{'arch':<8}{'size':>5}{'dtype':>6}{'ours':>9}{'timm':>9}{'hf':>9}"
        f"{'ours/timm':>11}{'ours/hf':>9}{'ours/faster':>13}"
    )
    rows = []
    for arch in args.archs:
        for size in args.sizes:
            models = build_models(arch, size, device)
            x = torch.randn(args.batch_size, 3, size, size, generator=generator).to(device)  # [B, 3, S, S]
            check_same_outputs(models, x)
            for dtype_name in args.dtypes:
                rates = measure(models, x, DTYPES[dtype_name], args)
                ratios = {peer: rates["ours"] / rates[peer] for peer in PEERS}
                faster = rates["ours"] / max(rates[peer] for peer in PEERS)
                print(
                    f"{arch:<8}{size:>5}{dtype_name:>6}{rates['ours']:>9.2f}{rates['timm']:>9.2f}{rates['hf']:>9.2f}"
                    f"{ratios['timm']:>11.3f}{ratios['hf']:>9.3f}{faster:>13.3f}",
                    flush=True,
                )
                rows.append({"arch": arch, "size": size, "dtype": dtype_name, **rates, "ours/faster": faster})
            del models
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
