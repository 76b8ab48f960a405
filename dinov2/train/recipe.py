"""A pretraining recipe scaled to the data: ``recipe.auto=true`` derives the keys below from the number of
images, their size, the network depth and the training length (``recipe.budget_minutes`` or the dataset size).

DINOv2's defaults were set for 142M images and batches of 2048; on a few thousand images they make the DINO
head's targets uniform (see ``dinov2.train.collapse_monitor``). Each rule below says why it holds. A key that the
config file or the command line sets is never changed, and the values used go into the run's ``config.yaml``, so
the run is reproducible from its output folder alone (with ``recipe.auto`` still true the rules then find nothing
left to derive).
"""

import logging
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dinov2 import distributed
from dinov2.data import make_dataset
from dinov2.errors import DataError
from dinov2.logging import FILE_ONLY
from dinov2.models import build_model

__all__ = [
    "SCHEDULE_KEYS",
    "DataFacts",
    "apply_recipe",
    "derive_recipe",
    "fast_bf16",
    "flat_keys",
    "measure_data",
    "schedule_keys",
]

logger = logging.getLogger("dinov2")

_SIZE_SAMPLES = 32  # images decoded to measure the typical image size
_DEEP = 18  # LayerScale 1e-5 was made for deeper networks (CaiT); shallower ones use 0.1


@dataclass(frozen=True)
class DataFacts:
    n_images: int
    image_size: int  # median shorter side, in pixels


def measure_data(dataset_str: str) -> DataFacts:
    """Counts the images of ``dataset_str`` and the median shorter side of a few of them (spread evenly)."""
    dataset = make_dataset(dataset_str=dataset_str)
    n = len(dataset)
    if n == 0:
        raise DataError(f"train.dataset_path={dataset_str!r} holds no image")
    step = max(1, n // _SIZE_SAMPLES)
    sides = [min(dataset[index][0].size) for index in range(0, n, step)][:_SIZE_SAMPLES]
    return DataFacts(n_images=n, image_size=int(statistics.median(sides)))


def _prototypes(n_images: int) -> int | None:
    """Few images cannot populate 65536 prototypes: with about 1024 below 20k images, 2048 below 50k and 4096
    below 100k each prototype gathers tens of images, so the centered targets stay sharp. None: keep the config."""
    for limit, prototypes in ((20_000, 1024), (50_000, 2048), (100_000, 4096)):
        if n_images < limit:
            return prototypes
    return None


def _patch_size(image_size: int) -> int:
    """About 3 patches per side for small images, 16 px at most (the standard ViT patch; larger images then get
    more tokens). Few tokens make an iteration cheap, and a short CPU run gains more from more images seen than from
    a finer grid: on Fashion-MNIST (28 px) after 9 minutes, online k-NN 76.8 % with 4 x 4 patches (800 iterations),
    79.6 % with 3 x 3 (1200), 80.0 % with 2 x 2 (2000), which then stayed flat from 400 iterations on."""
    return int(min(16, max(4, round(image_size / 3))))


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast on ``device``: CUDA with bf16 support, or a CPU with AVX512-BF16 /
    AMX (2.5x the fp32 matmul throughput measured on a Zen 4 core; without them bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _precision_keys(bf16: bool) -> dict[str, Any]:
    """Every part computes in bf16 (fast bf16 hardware) or fp32; gradients are reduced in fp32."""
    dtype = "bf16" if bf16 else "fp32"
    keys: dict[str, Any] = {"compute_precision.grad_scaler": False}
    for model in ("student", "teacher"):
        for part in ("backbone", "dino_head", "ibot_head"):
            prefix = f"compute_precision.{model}.{part}.mixed_precision"
            keys.update({f"{prefix}.param_dtype": dtype, f"{prefix}.reduce_dtype": "fp32"})
    return keys


def _data_workers(cpus_per_rank: int, *, on_cpu: bool) -> int:
    """Data-loader workers per rank. With two cores or fewer the training process loads its own batches: a worker
    process preempts one of the training threads at every operation (Fashion-MNIST on 2 cores, seconds per
    iteration: 0.253 with one worker, 0.224 without, 0.167 with the data free). When a CPU also trains, about a
    fifth of the cores load (the measured share of loading in a 2-core iteration: 0.07 core-seconds against 0.29
    for the step, Fashion-MNIST and emoji alike) and :func:`_cpu_threads` gives the rest to the training; an
    accelerator leaves all but one core to the loading (at most 10)."""
    if cpus_per_rank <= 2:
        return 0
    if on_cpu:
        return max(1, round(cpus_per_rank / 5))
    return int(min(10, cpus_per_rank - 1))


def _cpu_threads(cpus_per_rank: int, workers: int, default_threads: int) -> int:
    """Training threads of a CPU rank: the cores its loading workers leave, at most PyTorch's default (its own
    choice, or OMP_NUM_THREADS); with the default and the workers on the same cores, the workers would preempt the
    training threads as above."""
    return max(1, min(default_threads, cpus_per_rank - workers))


def _round_to(value: float, multiple: int, minimum: int) -> int:
    return int(max(minimum, round(value / multiple)) * multiple)


# From this many iterations on, the official cosine of the teacher momentum up to 1.0 is kept.
_LONG_RUN = 20_000


def _teacher_momentum_keys(iterations: int) -> dict[str, float]:
    """The teacher's EMA momentum: it must follow the student within a fraction of the run (0.99 below ~2k
    iterations, up to the official 0.996 for long runs). A short run holds it constant: the official cosine up to
    1.0 makes the EMA time constant 1 / (1 - m) grow past 1000 iterations from 80 % of the run on, harmless in a
    100k-iteration run but, in a run of a few thousand, it freezes the teacher (the model that is evaluated) for
    its last third while the student still learns. Measured on Fashion-MNIST (k-NN of the teacher): held at 0.99
    it kept rising where the cosine went flat, +1.05 points after 500 iterations on the 60k images, +2.15 on a 5k
    subset (6.4 epochs), +0.97 in the 20-minute main job; on the 64 px emoji the two were within the spread of
    two seeds (57.8 / 58.9 held, 61.8 / 57.8 cosine)."""
    momentum = round(min(0.996, max(0.99, 1 - 20 / iterations)), 4)
    return {
        "teacher.momentum_teacher": momentum,
        "teacher.final_momentum_teacher": momentum if iterations < _LONG_RUN else 1.0,
    }


def derive_recipe(
    facts: DataFacts,
    *,
    depth: int,
    global_batch: int,
    iterations: int | None,
    epochs: int = 100,
    bf16: bool = False,
    cpus_per_rank: int = 1,
    cpu_threads: int | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """The derived ``{dotted key: value}``.

    ``iterations`` is the training length (from a time budget); None derives it from the dataset size: about 2M
    samples seen, at least 10 and at most 300 epochs (small sets need many passes, large ones few). ``epochs`` is
    the ``optim.epochs`` the schedule is expressed in (see :func:`schedule_keys`); ``bf16`` whether the device has
    fast bf16 (:func:`fast_bf16`); ``cpus_per_rank`` and ``cpu_threads`` (PyTorch's default threads when the
    training runs on the CPU, None on an accelerator) split the cores between the data-loader workers and the
    training threads; ``num_workers`` is the user's worker count, if set (the threads then take the cores it leaves).
    """
    patch = _patch_size(min(facts.image_size, 224))
    workers = num_workers if num_workers is not None else _data_workers(cpus_per_rank, on_cpu=cpu_threads is not None)
    global_size = _round_to(min(facts.image_size, 224), patch, minimum=2)
    # Local crops cover 96/224 of the global crop side as in the reference, at least 2 x 2 patches.
    local_size = _round_to(global_size * 96 / 224, patch, minimum=2)
    if iterations is None:
        data_epochs = min(300, max(10, round(2_000_000 / facts.n_images)))
        iterations = math.ceil(data_epochs * facts.n_images / global_batch)
    recipe: dict[str, Any] = {
        "student.patch_size": patch,
        "crops.global_crops_size": global_size,
        "crops.local_crops_size": local_size,
        # A crop of a small image has little to spare: the reference's 0.32 lower bound leaves too little object.
        "crops.global_crops_scale": [0.4, 1.0] if facts.image_size <= 64 else [0.32, 1.0],
        # With LayerScale 1e-5 the CLS token of a shallow network barely depends on the image at first, so the
        # centered teacher targets are uniform from the start and the DINO head learns to output uniform.
        "student.layerscale": 0.1 if depth <= _DEEP else 1.0e-5,
        **_teacher_momentum_keys(iterations),
        "optim.epochs": epochs,
        **schedule_keys(iterations, epochs),
        **_precision_keys(bf16),
        "train.num_workers": workers,
        # Colours drawn per batch: torchvision's per-image colour ops cost ~4 ms for the 6 crops of a small image,
        # mostly call overhead, and on a few cores the data worker then slows the training threads.
        "crops.color_on_batch": True,
        # ... and the crops drawn with numpy and cut by one PIL call each (540 -> 220 us per 28 px image): the data
        # loading shares the cores with the training (Fashion-MNIST, 2 cores: 0.17 s per step with the data free).
        "crops.fast_crops": True,
    }
    if cpu_threads is not None:
        recipe["train.cpu_threads"] = _cpu_threads(cpus_per_rank, workers, cpu_threads)
    prototypes = _prototypes(facts.n_images)
    if prototypes is not None:
        recipe["dino.head_n_prototypes"] = prototypes
        recipe["ibot.head_n_prototypes"] = prototypes
    if facts.n_images < 100_000:
        # Soft targets (the reference's warm-up to 0.07) over few prototypes and small batches stay close to
        # uniform for the whole short run; a constant 0.04 keeps them sharper than the student's (0.1).
        recipe["teacher.warmup_teacher_temp"] = 0.04
        recipe["teacher.teacher_temp"] = 0.04
        # Layer-wise lr decay and the patch-embedding lr factor slow the first layers to 5-30 % of the lr: made for
        # stable 100-epoch runs, they keep a short run from training the layers that see the pixels.
        recipe["optim.layerwise_decay"] = 1.0
        recipe["optim.patch_embed_lr_mult"] = 1.0
    return recipe


# The keys a training length sets (optim.epochs is not among them: every *_epochs key is relative to it).
SCHEDULE_KEYS = ("train.OFFICIAL_EPOCH_LENGTH", "evaluation.eval_period_iterations", "train.saveckp_freq")


def schedule_keys(iterations: int, epochs: int) -> dict[str, Any]:
    """A run of at most ``iterations`` (at least one per epoch) in ``epochs`` "epochs": the epoch length, and five
    teacher exports and ten checkpoints over the run. Rounded down, so a time budget is not exceeded by the
    rounding (up to one epoch length: 13 % of a 700-iteration run). With the reference's 100 epochs every
    ``*_epochs`` key becomes a percentage of the run (lr warm-up 10 %, teacher-temperature warm-up 30 %, last layer
    frozen 1 %)."""
    epoch_length = max(1, iterations // epochs)
    total = epochs * epoch_length
    return {
        "train.OFFICIAL_EPOCH_LENGTH": epoch_length,
        "evaluation.eval_period_iterations": max(1, total // 5),
        "train.saveckp_freq": max(1, total // 10),
    }


def _flat(cfg: DictConfig, prefix: str = "") -> Iterable[str]:
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        yield full
        if isinstance(value, DictConfig):
            yield from _flat(value, f"{full}.")


def apply_recipe(
    cfg: DictConfig,
    protected: set[str],
    *,
    global_batch: int,
    iterations: int | None = None,
    schedule_only: bool = False,
) -> dict[str, Any]:
    """Sets the derived keys not in ``protected`` (dotted keys the user set); returns what was set.

    ``iterations`` fixes the training length (a time budget), else it comes from the dataset size;
    ``schedule_only`` (a budget without ``recipe.auto``) sets the :data:`SCHEDULE_KEYS` only. The schedule is
    expressed in ``optim.epochs`` when the user set it, else in 100 epochs.
    """
    epochs = int(cfg.optim.epochs) if "optim.epochs" in protected or schedule_only else 100
    if schedule_only:
        derived, what = schedule_keys(iterations, epochs), f"{iterations} iterations in {epochs} epochs"
    else:
        facts = measure_data(cfg.train.dataset_path)
        depth = _depth(cfg.student)
        device = distributed.get_device()
        derived = derive_recipe(
            facts,
            depth=depth,
            global_batch=global_batch,
            iterations=iterations,
            epochs=epochs,
            bf16=fast_bf16(device),
            cpus_per_rank=_cpus_per_rank(),
            cpu_threads=torch.get_num_threads() if device.type == "cpu" else None,
            num_workers=int(cfg.train.num_workers) if "train.num_workers" in protected else None,
        )
        what = f"{facts.n_images} images of about {facts.image_size} px, depth {depth}"
    applied = {key: value for key, value in derived.items() if key not in protected}
    for key, value in applied.items():
        OmegaConf.update(cfg, key, value, merge=False)
    kept = sorted(set(derived) - set(applied)) or "none"
    logger.info("recipe: %s -> %s (kept as set by the user: %s)", what, applied, kept, extra=FILE_ONLY)
    logger.info("recipe: %s -> %s (all values in config.yaml)", what, _summary(cfg))
    return applied


def _summary(cfg: DictConfig) -> str:
    """The recipe's main choices in one short line."""
    iterations = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
    return (
        f"patch {cfg.student.patch_size}, crops {cfg.crops.global_crops_size}/{cfg.crops.local_crops_size} px, "
        f"{cfg.dino.head_n_prototypes} prototypes, LayerScale {cfg.student.layerscale:g}, teacher temperature "
        f"{cfg.teacher.teacher_temp:g}, EMA {cfg.teacher.momentum_teacher:g}, "
        f"{cfg.compute_precision.student.backbone.mixed_precision.param_dtype}, {iterations} iterations"
    )


def _cpus_per_rank() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, distributed.get_local_size()))


def flat_keys(cfg: DictConfig) -> set[str]:
    """Every dotted key (and parent key) that ``cfg`` sets."""
    return set(_flat(cfg))


def _depth(student_cfg: DictConfig) -> int:
    """The number of blocks of ``student.arch``, read off a model built on the meta device (no memory, no RNG)."""
    with torch.device("meta"):
        model, _ = build_model(student_cfg, only_teacher=True, img_size=student_cfg.patch_size)
    return int(model.n_blocks)
