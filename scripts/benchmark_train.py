"""Speed, memory and model-FLOPs utilisation of one DINOv2 training step (student + teacher + heads + losses +
AdamW + EMA), on one batch of generated images from the loader training uses, repeated (data loading not timed).

Cases: ``vits14`` = ViT-S/14 with the reference crops (2 x 224 + 8 x 98), the ``train/vits14_1gpu`` preset (16384
prototypes); ``tiny`` = the ``train/vit_tiny_cpu`` preset (ViT-Ti/16, 2 x 64 + 2 x 32); ``small`` = the main job's
``train/small_data`` run on Fashion-MNIST (ViT-Ti/9, 2 x 27 + 4 x 18, 4096 prototypes, as its recipe resolves).
FLOPs are counted analytically (matmuls and convolutions, 2 FLOPs per multiply-add; backward = 2 x forward; the
teacher runs forward only) and compared with the measured peak of a large matmul in the same precision on the same
device. Usage::

    python scripts/benchmark_train.py --batch-size 4 --iterations 3            # CPU, fp32
    python scripts/benchmark_train.py --batch-size 64 --precision bf16         # one GPU
"""

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the per-case processes import this script by name

from dinov2 import distributed  # noqa: E402
from dinov2.train import SSLMetaArch  # noqa: E402
from dinov2.train.train import (  # noqa: E402
    build_data_loader,
    build_optimizer,
    build_schedulers,
    scheduled_values,
    train_step,
)
from dinov2.utils.config import apply_scaling_rules_to_cfg, get_cfg_from_args  # noqa: E402

CASES = {"vits14": "train/vits14_1gpu", "tiny": "train/vit_tiny_cpu", "small": "train/small_data"}
# What the recipe of train/small_data derives for Fashion-MNIST (60,000 images of 28 px); see runs/*/config.yaml.
CASE_OPTS = {
    "small": [
        "student.patch_size=9",
        "crops.global_crops_size=27",
        "crops.local_crops_size=18",
        "dino.head_n_prototypes=4096",
        "ibot.head_n_prototypes=4096",
        "student.layerscale=0.1",
    ]
}
PARTS = ("backbone", "dino_head", "ibot_head")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: 2 on CPU, 64 on GPU)")
    parser.add_argument("--iterations", type=int, default=3, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None, help="default: fp32 on CPU")
    parser.add_argument("--matmul-size", type=int, default=None, help="square matmul for the peak (default 2048/8192)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the backbones (train.compile); warm-up time is printed"
    )
    return parser


def _config(case: str, batch_size: int, precision: str, output_dir: str, compile_: bool = False):
    opts = [f"train.batch_size_per_gpu={batch_size}", "student.drop_path_rate=0.0", *CASE_OPTS.get(case, [])]
    opts.append(f"train.compile={compile_}")
    opts += [
        f"compute_precision.{m}.{p}.mixed_precision.param_dtype={precision}"
        for m in ("student", "teacher")
        for p in PARTS
    ]
    opts.append(f"compute_precision.grad_scaler={precision == 'fp16'}")
    args = argparse.Namespace(config_file=CASES[case], output_dir=output_dir, opts=opts)
    return apply_scaling_rules_to_cfg(get_cfg_from_args(args))


def _training_batch(cfg, batch_size: int, folder: str) -> dict:
    """One batch from the loader training uses (``build_data_loader``), on ``batch_size`` generated images."""
    rng = np.random.default_rng(0)
    side = 2 * cfg.crops.global_crops_size
    for i in range(batch_size):
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(Path(folder) / f"{i:04d}.png")
    cfg.train.dataset_path = f"ImageFolder:root={folder}:extra={folder}/scan"  # the scan cache goes too
    cfg.train.num_workers = 0
    return next(iter(build_data_loader(cfg)))


def _vit_forward_flops(model: torch.nn.Module, n_images: int, image_size: int) -> float:
    """Matmul FLOPs of a ViT forward: patch embedding, per block qkv/proj/MLP (12 D^2 per token, for MLP ratio 4)
    and attention (2 T D per token for QK^T and AV)."""
    dim, depth, patch = model.embed_dim, model.n_blocks, model.patch_size
    n_patches = (image_size // patch) ** 2
    tokens = 1 + model.num_register_tokens + n_patches
    macs = n_patches * 3 * patch * patch * dim + depth * tokens * (12 * dim * dim + 2 * tokens * dim)
    return 2.0 * n_images * macs


def _head_flops(head: torch.nn.Module, n_tokens: int) -> float:
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    macs = (
        sum(m.in_features * m.out_features for m in linears)
        + head.last_layer.in_features * head.last_layer.out_features
    )
    return 2.0 * n_tokens * macs


def _step_flops(model: SSLMetaArch, batch: dict, cfg) -> float:
    """Student forward + backward (3 x forward) and teacher forward, backbones and heads."""
    n_global, n_local = batch["collated_global_crops"].shape[0], batch["collated_local_crops"].shape[0]
    masked = batch["mask_indices_list"].shape[0]
    backbone = model.student.backbone
    student = _vit_forward_flops(backbone, n_global, cfg.crops.global_crops_size)
    student += _vit_forward_flops(backbone, n_local, cfg.crops.local_crops_size)
    teacher = _vit_forward_flops(backbone, n_global, cfg.crops.global_crops_size)
    ibot_head = model.student["ibot_head"] if "ibot_head" in model.student else model.student.dino_head
    student += _head_flops(model.student.dino_head, n_global + n_local) + _head_flops(ibot_head, masked)
    teacher += _head_flops(model.student.dino_head, n_global) + _head_flops(ibot_head, masked)
    return 3 * student + teacher


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize()


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` ``size x size`` matmuls."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; the process's peak RSS


def benchmark_case(
    case: str, batch_size: int, precision: str, iterations: int, warmup: int, compile_: bool = False
) -> dict:
    cfg = _config(case, batch_size, precision, tempfile.gettempdir(), compile_)  # nothing is written there
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    model.train()
    optimizer = build_optimizer(cfg, model.get_params_groups())
    scheduled = scheduled_values(build_schedulers(cfg), 0)
    with tempfile.TemporaryDirectory() as folder:
        batch = _training_batch(cfg, batch_size, folder)
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    warmup_start = time.perf_counter()
    for step in range(warmup + iterations):
        _synchronize(device)
        start = time.perf_counter()
        train_step(cfg, model, optimizer, batch, scheduled)
        _synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        elif step == warmup - 1:
            warmup_seconds = time.perf_counter() - warmup_start
    seconds = float(np.median(times))
    return {
        "case": case,
        "batch": batch_size,
        "step_s": seconds,
        "it_per_s": 1 / seconds,
        "images_per_s": batch_size * distributed.get_global_size() / seconds,
        "flop_per_step": _step_flops(model, batch, cfg),
        "peak_mem_mb": _peak_memory_mb(device),
        "warmup_s": warmup_seconds if warmup > 0 else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    device = distributed.get_device()
    precision = args.precision or ("fp32" if device.type == "cpu" else "bf16")
    batch_size = args.batch_size or (2 if device.type == "cpu" else 64)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    matmul_size = args.matmul_size or (2048 if device.type == "cpu" else 8192)
    peak = measure_matmul_peak(device, dtype, matmul_size)
    print(
        f"device {device}, precision {precision}, threads {torch.get_num_threads()}, "
        f"matmul peak ({matmul_size}^2 {precision}) {peak / 1e12:.3f} TFLOP/s"
    )
    header = (
        f"{'case':8} {'batch':>5} {'s/step':>8} {'it/s':>7} {'img/s':>8} {'TFLOP/step':>10} {'MFU':>6} {'peak MB':>8} "
        f"{'warm-up s':>9}"
    )
    print(header)
    for case in args.cases:
        # Each case in its own process, so its peak memory is its own (the process-wide peak RSS never goes down).
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            future = pool.submit(
                benchmark_case, case, batch_size, precision, args.iterations, args.warmup, args.compile
            )
            result = future.result()
        mfu = result["flop_per_step"] / result["step_s"] / peak
        print(
            f"{case:8} {result['batch']:>5} {result['step_s']:>8.3f} {result['it_per_s']:>7.3f} "
            f"{result['images_per_s']:>8.2f} {result['flop_per_step'] / 1e12:>10.4f} {mfu:>6.1%} "
            f"{result['peak_mem_mb']:>8.0f} {result['warmup_s']:>9.1f}"
        )


if __name__ == "__main__":
    main()
