"""DINOv2 pretraining entry point.

    python dinov2/train/train.py --config-file CFG --output-dir DIR [--no-resume] [key=value ...]

Runs as one process (CPU or one GPU), under ``torchrun --nproc_per_node N`` or under SLURM (``srun`` or
``dinov2/run/train/train.py``). Output folder layout::

    config.yaml                 the merged config (optim.lr holds the scaled learning rate used)
    logs/log.txt[.rank<r>]      logs
    training_metrics.json       one JSON line every 10 iterations
    ckpt/<iteration:07d>/       DCP checkpoints (the newest train.max_to_keep are kept); a run resumes from the newest
    eval/training_<it>/teacher_checkpoint.pth   teacher exports {"teacher": state dict}, every
                                evaluation.eval_period_iterations
    nan_diagnostics_<it>.json   written before stopping on a non-finite loss
"""

import argparse
import copy
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from dinov2 import distributed
from dinov2.data import DataAugmentationDINO, MaskingGenerator, collate_data_and_cast
from dinov2.data.ssl_loader import make_ssl_data_loader
from dinov2.errors import ConfigError, MissingPathError
from dinov2.fsdp import full_state_dict
from dinov2.fsdp.checkpointer import Checkpointer, restore_rng_state, save_teacher_checkpoint
from dinov2.logging import FILE_ONLY, MetricLogger
from dinov2.models import backbone_args_from_cfg
from dinov2.models.checkpoint_filter import to_flat_block_keys
from dinov2.train.collapse_monitor import CollapseMonitor, uniform_loss_values
from dinov2.train.online_knn import OnlineKnn
from dinov2.train.recipe import SCHEDULE_KEYS, apply_recipe, flat_keys
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.cli import run_cli
from dinov2.utils.config import get_explicit_cfg, setup, write_config
from dinov2.utils.dtype import as_torch_dtype
from dinov2.utils.signals import StopRequest, ignore_stop_signals, signal_name
from dinov2.utils.utils import CosineScheduler

__all__ = [
    "NonFiniteLossError",
    "StepResult",
    "apply_optim_scheduler",
    "build_data_loader",
    "build_optimizer",
    "build_schedulers",
    "do_test",
    "do_train",
    "get_args_parser",
    "main",
    "scheduled_values",
    "train_step",
]

logger = logging.getLogger("dinov2")

_PRINT_FREQ = 10
# What the console's progress line shows (every meter goes to the log file and training_metrics.json).
_CONSOLE_METERS = ("total_loss", "dino_global_crops_loss", "ibot_loss", "koleo_loss", "teacher_entropy")


class NonFiniteLossError(RuntimeError):
    """A loss term was NaN or infinite for more than ``train.max_nan_steps`` consecutive iterations."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DINOv2 training", add_help=add_help)
    parser.add_argument(
        "--config-file", default="", metavar="FILE", help="config YAML, or a packaged name such as train/vitl14"
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start from iteration 0 even if <output-dir>/ckpt holds a checkpoint",
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="export the teacher of the newest checkpoint to eval/manual_<it>"
    )
    parser.add_argument("--eval", type=str, default="", help="unused, kept for the reference's command lines")
    parser.add_argument(
        "--resume-with-changes",
        action="store_true",
        help="resume although the config changed, when only keys that are safe to change did "
        f"({', '.join(_RESUMABLE_CHANGES)})",
    )
    parser.add_argument(
        "opts",
        help="config overrides key.sub=value after all flags, e.g. optim.base_lr=0.001 train.batch_size_per_gpu=32",
        default=None,
        nargs=argparse.REMAINDER,
    )
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        default="",
        type=str,
        help="Output directory to save logs and checkpoints",
    )
    return parser


# -- optimizer and schedules ----------------------------------------------------------------------------------------


def build_optimizer(cfg: DictConfig, params_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """AdamW over the meta-architecture's parameter groups (lr and weight decay are set every iteration), as one
    fused kernel on CPU and CUDA: on a CPU the foreach implementation runs ~6 small ops per tensor, 8 % of a small
    model's step."""
    devices = {param.device.type for group in params_groups for param in group["params"]}
    fused = devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(params_groups, betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2), fused=fused)


def build_schedulers(cfg: DictConfig) -> tuple[CosineScheduler, ...]:
    """``(lr, wd, momentum, teacher_temp, last_layer_lr)`` per-iteration schedules: lr with a linear warmup then
    cosine to ``min_lr``; cosine weight decay and teacher momentum; a linear teacher-temperature warmup then
    constant; lr again for the heads' last layer, but 0 during ``freeze_last_layer_epochs``."""
    epoch_len = cfg.train.OFFICIAL_EPOCH_LENGTH
    total = cfg.optim.epochs * epoch_len
    lr = CosineScheduler(
        base_value=cfg.optim.lr,
        final_value=cfg.optim.min_lr,
        total_iters=total,
        warmup_iters=cfg.optim.warmup_epochs * epoch_len,
        start_warmup_value=0,
    )
    wd = CosineScheduler(base_value=cfg.optim.weight_decay, final_value=cfg.optim.weight_decay_end, total_iters=total)
    momentum = CosineScheduler(
        base_value=cfg.teacher.momentum_teacher, final_value=cfg.teacher.final_momentum_teacher, total_iters=total
    )
    temp_warmup = cfg.teacher.warmup_teacher_temp_epochs * epoch_len
    teacher_temp = CosineScheduler(
        base_value=cfg.teacher.teacher_temp,
        final_value=cfg.teacher.teacher_temp,
        total_iters=temp_warmup,
        warmup_iters=temp_warmup,
        start_warmup_value=cfg.teacher.warmup_teacher_temp,
    )
    last_layer_lr = copy.deepcopy(lr)
    last_layer_lr.schedule[: cfg.optim.freeze_last_layer_epochs * epoch_len] = 0
    logger.info("Schedulers ready.")
    return lr, wd, momentum, teacher_temp, last_layer_lr


_SCHEDULE_NAMES = ("lr", "wd", "mom", "teacher_temp", "last_layer_lr")


def scheduled_values(schedulers: tuple[CosineScheduler, ...], iteration: int) -> dict[str, float]:
    """``{"lr", "wd", "mom", "teacher_temp", "last_layer_lr"}`` at ``iteration`` (schedulers from
    :func:`build_schedulers`)."""
    return {name: float(scheduler[iteration]) for name, scheduler in zip(_SCHEDULE_NAMES, schedulers)}


def apply_optim_scheduler(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    for group in optimizer.param_groups:
        group["weight_decay"] = wd * group["wd_multiplier"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]


# -- data -----------------------------------------------------------------------------------------------------------


def build_data_loader(cfg: DictConfig, start_iter: int = 0, *, samples_seen: int | None = None) -> DataLoader:
    """The training batches from iteration ``start_iter`` on: multi-crop augmentation, iBOT masks, and a sharded
    infinite sampler advanced by ``samples_seen`` (default ``start_iter`` x the global batch; a checkpoint records
    it, which matters when the world size changed), so a resumed run continues the sample order. Crops and masks
    are seeded per sample position (see ``dinov2.data.ssl_loader``), so a resume is exact."""
    img_size, patch_size = cfg.crops.global_crops_size, cfg.student.patch_size
    n_tokens = (img_size // patch_size) ** 2
    mask_generator = MaskingGenerator(
        input_size=(img_size // patch_size, img_size // patch_size),
        max_num_patches=0.5 * img_size // patch_size * img_size // patch_size,
    )
    augmentation = DataAugmentationDINO(
        cfg.crops.global_crops_scale,
        cfg.crops.local_crops_scale,
        cfg.crops.local_crops_number,
        global_crops_size=cfg.crops.global_crops_size,
        local_crops_size=cfg.crops.local_crops_size,
        global_crops_1_blur_p=cfg.crops.global_crops_1_blur_p,
        global_crops_2_blur_p=cfg.crops.global_crops_2_blur_p,
        local_crops_blur_p=cfg.crops.local_crops_blur_p,
        color_on_batch=cfg.crops.color_on_batch,
        fast_crops=cfg.crops.fast_crops,
    )
    collate_fn = partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=n_tokens,
        mask_generator=mask_generator,
        dtype=as_torch_dtype(cfg.compute_precision.student.backbone.mixed_precision.param_dtype),
        batch_transform=augmentation.batch_transform,
    )
    rank, world_size = distributed.get_global_rank(), distributed.get_global_size()
    first_position = start_iter * cfg.train.batch_size_per_gpu * world_size if samples_seen is None else samples_seen
    return make_ssl_data_loader(
        cfg.train.dataset_path,
        transform=augmentation,
        collate_fn=collate_fn,
        batch_size=cfg.train.batch_size_per_gpu,
        num_workers=cfg.train.num_workers,
        seed=cfg.train.seed,
        first_position=first_position,
        rank=rank,
        world_size=world_size,
        worker_init_fn=ignore_stop_signals,
    )


# -- evaluation export, checkpoints ---------------------------------------------------------------------------------


def do_test(cfg: DictConfig, model: SSLMetaArch, iteration: str) -> Path:
    """Exports the teacher to ``<output_dir>/eval/<iteration>/teacher_checkpoint.pth`` as ``{"teacher": state}``
    with flat block keys (``backbone.blocks.<i>.*``, also for ``block_chunks`` > 0), which the hub builders and
    the eval scripts load strictly. Every rank must call it (gathering sharded weights is collective)."""
    state = full_state_dict(model.teacher)  # full tensors on rank 0 only
    backbone = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    heads = {key: value for key, value in state.items() if not key.startswith("backbone.")}
    flat = {f"backbone.{key}": value for key, value in to_flat_block_keys(backbone).items()}
    path = Path(cfg.train.output_dir) / "eval" / iteration / "teacher_checkpoint.pth"
    save_teacher_checkpoint(path, {**flat, **heads}, backbone_args=backbone_args_from_cfg(cfg))
    if distributed.is_main_process():
        logger.info("exported the teacher to %s", path)
    return path


def _resume_or_load(
    cfg: DictConfig, model: SSLMetaArch, optimizer: torch.optim.Optimizer, checkpointer: Checkpointer, resume: bool
) -> tuple[int, dict[str, Any] | None]:
    """``(start_iteration, extra)``: resumes everything (model, optimizer, loss centers, grad scaler, RNG) from
    the newest complete checkpoint and returns its extras (``rng``, ``samples_seen``), or loads the model only
    from ``MODEL.WEIGHTS``, or starts at 0 (extras None)."""
    latest = checkpointer.latest() if resume else None
    if latest is not None:
        extra = checkpointer.load(latest, model=model, optimizer=optimizer)
        if model.fp16_scaler is not None and extra.get("grad_scaler"):
            model.fp16_scaler.load_state_dict(extra["grad_scaler"])
        logger.info("resumed from %s (iteration %d)", latest, extra["iteration"])
        return int(extra["iteration"]) + 1, extra
    if cfg.MODEL.WEIGHTS:
        checkpointer.load(cfg.MODEL.WEIGHTS, model=model, restore_rng=False, model_only=True)
        logger.info("loaded the model (only) from MODEL.WEIGHTS=%s", cfg.MODEL.WEIGHTS)
    return 0, None


def _save_checkpoint(
    model: SSLMetaArch,
    optimizer: torch.optim.Optimizer,
    checkpointer: Checkpointer,
    iteration: int,
    samples_seen: int,
) -> None:
    extra = {
        "grad_scaler": model.fp16_scaler.state_dict() if model.fp16_scaler is not None else None,
        "samples_seen": samples_seen,  # global data position after this iteration
    }
    checkpointer.save(iteration, model=model, optimizer=optimizer, extra=extra)


# -- one iteration --------------------------------------------------------------------------------------------------


def _reduce_losses(
    loss_dict: dict[str, torch.Tensor], stop: bool, stats: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, float], list[int], bool, dict[str, float]]:
    """Rank-averaged loss terms, the ranks whose local loss was not finite, whether any rank must stop, and the
    rank-averaged monitor statistics; one collective for all four."""
    stats = stats or {}
    world = distributed.get_global_size()
    losses = torch.stack([value.float() for value in loss_dict.values()])  # [L]
    values = torch.stack([*losses, *(value.float() for value in stats.values())])  # [L + S]
    values = values.to(distributed.get_collective_device())
    flags = torch.zeros(world + 1, device=values.device)  # [W non-finite flags, stop]
    flags[distributed.get_global_rank()] = float(not bool(torch.isfinite(losses).all()))
    flags[world] = float(stop)
    packed = distributed.all_reduce(torch.cat((values, flags)))
    means = (packed[: len(values)] / world).tolist()
    bad_ranks = [rank for rank in range(world) if packed[len(values) + rank] > 0]
    n_losses = len(loss_dict)
    return (
        dict(zip(loss_dict, means[:n_losses])),
        bad_ranks,
        bool(packed[-1] > 0),
        dict(zip(stats, means[n_losses:])),
    )


def _write_nan_diagnostics(cfg: DictConfig, iteration: int, record: dict[str, Any]) -> Path:
    path = Path(cfg.train.output_dir) / f"nan_diagnostics_{iteration}.json"
    if distributed.is_main_process():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, path)
    return path


def _optimizer_step(cfg: DictConfig, model: SSLMetaArch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Per-part gradient clipping (after unscaling with fp16) and the optimizer step; returns the gradient norms."""
    scaler = model.fp16_scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    norms = model.clip_grad_norm_(cfg.optim.clip_grad) if cfg.optim.clip_grad else {}
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return {f"{name}_grad_norm": norm for name, norm in norms.items()}


@dataclass
class StepResult:
    """Outcome of :func:`train_step`."""

    losses: dict[str, float]  # rank-averaged loss terms
    bad_ranks: list[int]  # ranks whose loss was not finite (the step was then not applied)
    stop: bool  # some rank received a stop signal
    grad_norms: dict[str, float]
    stats: dict[str, float]  # rank-averaged collapse statistics of the teacher (see collapse_monitor)


def train_step(
    cfg: DictConfig,
    model: SSLMetaArch,
    optimizer: torch.optim.Optimizer,
    data: dict[str, Any],
    scheduled: dict[str, float],
    stop_request: StopRequest | None = None,
) -> StepResult:
    """Forward, backward, loss reduction, then (only if every rank's loss is finite) clipping, the optimizer step
    and the teacher EMA, so a non-finite loss never reaches the weights. A stop signal received up to the loss
    reduction is acted on at the end of this iteration."""
    apply_optim_scheduler(optimizer, scheduled["lr"], scheduled["wd"], scheduled["last_layer_lr"])
    optimizer.zero_grad(set_to_none=True)
    loss_dict = model.forward_backward(data, teacher_temp=scheduled["teacher_temp"])
    stop_requested = stop_request is not None and stop_request.signum != 0
    losses, bad_ranks, stop, stats = _reduce_losses(loss_dict, stop_requested, model.teacher_stats)
    grad_norms = {}
    if not bad_ranks:
        grad_norms = _optimizer_step(cfg, model, optimizer)
        model.update_teacher(scheduled["mom"])
    return StepResult(losses=losses, bad_ranks=bad_ranks, stop=stop, grad_norms=grad_norms, stats=stats)


def _check_finite(
    cfg: DictConfig, model: SSLMetaArch, iteration: int, result: StepResult, scheduled: dict[str, float], streak: int
) -> int:
    """Returns the new count of consecutive non-finite iterations; past ``train.max_nan_steps`` writes
    ``nan_diagnostics_<it>.json`` and raises :class:`NonFiniteLossError` naming the terms and the iteration."""
    if not result.bad_ranks:
        return 0
    streak += 1
    terms = [name for name, value in result.losses.items() if not math.isfinite(value)]
    if streak <= cfg.train.max_nan_steps:
        logger.warning("non-finite %s at iteration %d (ranks %s): step skipped", terms, iteration, result.bad_ranks)
        return streak
    record = {
        "iteration": iteration,
        "non_finite_terms": terms,
        "ranks_with_non_finite_loss": result.bad_ranks,
        "losses_rank_mean": {name: str(value) for name, value in result.losses.items()},
        "schedules": scheduled,
        "grad_scaler_scale": model.fp16_scaler.get_scale() if model.fp16_scaler is not None else None,
        "consecutive_non_finite_iterations": streak,
    }
    path = _write_nan_diagnostics(cfg, iteration, record)
    raise NonFiniteLossError(
        f"non-finite loss term(s) {', '.join(terms)} at iteration {iteration} (ranks {result.bad_ranks}); "
        f"diagnostics in {path}. Common fixes: a lower optim.base_lr or a longer warmup, bf16 instead of fp16 "
        "(compute_precision.*.param_dtype), dino.koleo_loss_weight=0 when images are near-duplicates or the batch "
        "per rank is tiny; train.max_nan_steps > 0 skips isolated bad steps"
    )


def _periodic_outputs(
    cfg: DictConfig,
    model: SSLMetaArch,
    optimizer: torch.optim.Optimizer,
    checkpointer: Checkpointer,
    iteration: int,
    samples_seen: int,
    stop: bool,
    online_knn: OnlineKnn | None = None,
    metric_logger: MetricLogger | None = None,
) -> None:
    """Teacher export (and online k-NN) every ``evaluation.eval_period_iterations``; checkpoint every
    ``train.saveckp_freq`` iterations, at the last iteration and when a stop was requested."""
    max_iter = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
    eval_period = cfg.evaluation.eval_period_iterations
    if eval_period > 0 and (iteration + 1) % eval_period == 0:
        do_test(cfg, model, f"training_{iteration}")
        if online_knn is not None:
            top1 = online_knn(model.teacher.backbone, model.teacher_autocast())
            logger.info("online k-NN top-1 of the teacher at iteration %d: %.2f %%", iteration, top1)
            if metric_logger is not None:
                metric_logger.write_record(iteration, online_knn_top1=top1)
    save_period = cfg.train.saveckp_freq
    if stop or iteration == max_iter - 1 or (save_period > 0 and (iteration + 1) % save_period == 0):
        _save_checkpoint(model, optimizer, checkpointer, iteration, samples_seen)


def _monitor_start(cfg: DictConfig, max_iter: int) -> int:
    """The collapse monitor looks after the lr and teacher-temperature warm-ups (targets are meant to be soft
    before), and at most after a quarter of the run."""
    epoch_len = cfg.train.OFFICIAL_EPOCH_LENGTH
    warmup = max(cfg.optim.warmup_epochs, cfg.teacher.warmup_teacher_temp_epochs) * epoch_len
    return min(warmup, max_iter // 4)


def _monitor_patience(max_iter: int) -> int:
    """Consecutive collapsed iterations before the warning: 5 % of the run, between 20 and 500."""
    return int(min(500, max(20, max_iter // 20)))


def _log_step(
    metric_logger: MetricLogger,
    monitor: CollapseMonitor,
    iteration: int,
    data: dict[str, Any],
    scheduled: dict[str, float],
    result: "StepResult",
) -> None:
    """Records a finite step: schedules, losses and their sum, gradient norms, the collapse statistics and each
    loss's ratio to its uniform value (the collapse monitor warns from these)."""
    ratios = monitor.update(iteration, {**result.losses, **result.stats})
    metric_logger.update(
        **scheduled,
        current_batch_size=data["collated_global_crops"].shape[0] / 2,
        total_loss=sum(result.losses.values()),
        **result.losses,
        **result.grad_norms,
        **result.stats,
        **ratios,
    )


def do_train(cfg: DictConfig, model: SSLMetaArch, resume: bool = False) -> dict[str, Any]:
    """Trains until ``optim.epochs * OFFICIAL_EPOCH_LENGTH`` iterations (or a stop signal) and returns the global
    averages of the logged meters, plus ``iteration`` (the last one run) and ``stopped`` (True after a signal)."""
    model.train()
    optimizer = build_optimizer(cfg, model.get_params_groups())
    schedulers = build_schedulers(cfg)
    checkpointer = Checkpointer(cfg.train.output_dir, max_to_keep=cfg.train.max_to_keep)
    start_iter, extra = _resume_or_load(cfg, model, optimizer, checkpointer, resume)
    max_iter = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
    global_batch = cfg.train.batch_size_per_gpu * distributed.get_global_size()
    samples_seen = extra.get("samples_seen", start_iter * global_batch) if extra else start_iter * global_batch
    data_iter = iter(build_data_loader(cfg, start_iter, samples_seen=samples_seen))
    if extra is not None:
        restore_rng_state(extra["rng"])  # creating the iterator drew a seed: rewind to the checkpoint's RNG state
    metric_logger = MetricLogger(delimiter="  ", output_file=Path(cfg.train.output_dir) / "training_metrics.json")
    monitor = CollapseMonitor(
        uniform_loss_values(cfg), start_iteration=_monitor_start(cfg, max_iter), patience=_monitor_patience(max_iter)
    )
    online_knn = OnlineKnn.from_cfg(cfg)
    iteration, nan_streak, stopped = start_iter, 0, False
    logger.info("Starting training from iteration %d of %d", start_iter, max_iter)
    with StopRequest() as stop_request:
        progress = metric_logger.log_every(
            data_iter,
            _PRINT_FREQ,
            "Training",
            max_iter,
            start_iter,
            console_meters=_CONSOLE_METERS,
            samples_per_iteration=global_batch,
        )
        for data in progress:
            scheduled = scheduled_values(schedulers, iteration)
            result = train_step(cfg, model, optimizer, data, scheduled, stop_request)
            nan_streak = _check_finite(cfg, model, iteration, result, scheduled, nan_streak)
            if not result.bad_ranks:
                _log_step(metric_logger, monitor, iteration, data, scheduled, result)
            samples_seen += global_batch
            _periodic_outputs(
                cfg, model, optimizer, checkpointer, iteration, samples_seen, result.stop, online_knn, metric_logger
            )
            if result.stop:
                logger.info(
                    "stopped by %s (preemption, time limit or kill): checkpoint of iteration %d saved; re-running "
                    "the same command resumes from it",
                    signal_name(stop_request.signum) if stop_request.signum else "a stop signal on another rank",
                    iteration,
                )
                stopped = True
                break
            iteration += 1
    metric_logger.synchronize_between_processes()
    averages = {name: meter.global_avg for name, meter in metric_logger.meters.items()}
    return {**averages, "iteration": min(iteration, max_iter - 1), "stopped": stopped}


# -- recipe scaled to the data -------------------------------------------------------------------------------------

_CALIBRATION_STEPS = (3, 15)  # untimed, timed
# Share of the budget planned for training steps at the calibrated speed (exports, online k-NN and checkpoints take
# the rest). Measured on a shared 2-core VM, five whole runs with a data-loader worker took 0.84-1.28 x (mean 1.12)
# the calibrated time per iteration: the VM's speed drifts by 20-40 %, even within a minute; loading in the
# training process, 1.03-1.08 x.
_BUDGET_OVERHEAD = 0.9


def _measure_seconds_per_iteration(cfg: DictConfig) -> float:
    """Seconds per training iteration (data included) of a throwaway copy of the run: the median of the timed
    steps (a few slow ones, e.g. the VM's host busy for a second, must not shorten the whole run), slowest rank.
    The RNG states are restored afterwards, so the run itself is unchanged."""
    with torch.random.fork_rng(devices=[]):
        model = SSLMetaArch(cfg)
        model.prepare_for_distributed_training()
        model.train()
        optimizer = build_optimizer(cfg, model.get_params_groups())
        scheduled = scheduled_values(build_schedulers(cfg), 0)
        data = iter(build_data_loader(cfg))
        untimed, timed = _CALIBRATION_STEPS
        for _ in range(untimed):
            train_step(cfg, model, optimizer, next(data), scheduled)
        step_seconds = []
        for _ in range(timed):
            start = time.perf_counter()
            train_step(cfg, model, optimizer, next(data), scheduled)
            step_seconds.append(time.perf_counter() - start)
        seconds = torch.tensor(statistics.median(step_seconds), device=distributed.get_collective_device())
    return float(distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX))


def _budget_iterations(cfg: DictConfig) -> int:
    """Iterations that fit ``recipe.budget_minutes``, from calibration steps; recorded in
    ``<output_dir>/recipe.json`` and reused while the budget is unchanged (a resumed run keeps its schedule)."""
    path = Path(cfg.train.output_dir) / "recipe.json"
    budget = float(cfg.recipe.budget_minutes)
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("budget_minutes") == budget:
            return int(record["iterations"])
    seconds = _measure_seconds_per_iteration(cfg)
    iterations = max(10, int(budget * 60 * _BUDGET_OVERHEAD / seconds))
    logger.info("recipe.budget_minutes=%g: %.3f s per iteration -> %d iterations", budget, seconds, iterations)
    if distributed.is_main_process():
        record = {"budget_minutes": budget, "seconds_per_iteration": seconds, "iterations": iterations}
        path.write_text(json.dumps(record, indent=2) + "\n")
    return iterations


def use_cpu_threads(cfg: DictConfig) -> None:
    """``train.cpu_threads`` intra-op threads when training on a CPU device (0: PyTorch's default)."""
    if cfg.train.cpu_threads > 0 and distributed.get_device().type == "cpu":
        torch.set_num_threads(int(cfg.train.cpu_threads))


def _apply_recipe(cfg: DictConfig, args: argparse.Namespace) -> None:
    """``recipe.auto``: derives the keys the user did not set (see ``dinov2.train.recipe``). With
    ``recipe.budget_minutes`` > 0 the training length comes from the budget (calibrated with the derived keys in
    place): it replaces the config file's epoch length, but a length given on the command line is a conflict."""
    user_keys = flat_keys(get_explicit_cfg(args))
    cli_keys = flat_keys(get_explicit_cfg(argparse.Namespace(config_file="", opts=args.opts)))
    global_batch = cfg.train.batch_size_per_gpu * distributed.get_global_size()
    if cfg.recipe.auto:
        apply_recipe(cfg, user_keys, global_batch=global_batch)
    use_cpu_threads(cfg)  # before the calibration, which must time the run's own setting
    if cfg.recipe.budget_minutes > 0:
        if "train.OFFICIAL_EPOCH_LENGTH" in cli_keys:
            raise ConfigError(
                "recipe.budget_minutes sets train.OFFICIAL_EPOCH_LENGTH from the time budget: drop one of the two "
                "overrides"
            )
        iterations = _budget_iterations(cfg)
        protected = (user_keys - set(SCHEDULE_KEYS)) | (cli_keys & set(SCHEDULE_KEYS))
        schedule_only = not cfg.recipe.auto
        apply_recipe(cfg, protected, global_batch=global_batch, iterations=iterations, schedule_only=schedule_only)


# Keys whose change does not invalidate a checkpoint (the length of the run, workers, periods, the lr derived from
# the world size, precision); any other change makes a resume a different experiment.
_RESUMABLE_CHANGES = (
    "optim.epochs",
    "train.OFFICIAL_EPOCH_LENGTH",
    "train.batch_size_per_gpu",  # with the world size (optim.lr records the global batch)
    "optim.lr",
    "train.num_workers",
    "train.cpu_threads",
    "train.saveckp_freq",
    "train.max_to_keep",
    "train.max_nan_steps",
    "train.output_dir",
    "recipe.budget_minutes",
    "evaluation.",
    "compute_precision.",
)


def _flat_values(cfg: DictConfig) -> dict[str, Any]:
    return {key: value for key, value in _walk(OmegaConf.to_container(cfg, resolve=True))}


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def check_resume_config(cfg: DictConfig, allow_safe_changes: bool = False) -> None:
    """Refuses to resume the checkpoints of ``train.output_dir`` with a config other than the one the run was
    started with (its ``config.yaml``), naming the changed keys and the ways out; ``allow_safe_changes`` lets the
    keys of ``_RESUMABLE_CHANGES`` change."""
    output_dir = Path(cfg.train.output_dir)
    if not (output_dir / "config.yaml").is_file() or not Checkpointer(output_dir).complete_checkpoints():
        return
    old, new = _flat_values(OmegaConf.load(output_dir / "config.yaml")), _flat_values(cfg)
    changed = {key: (old.get(key), new.get(key)) for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    changed.pop("train.output_dir", None)
    if not changed:
        return
    unsafe = sorted(key for key in changed if not key.startswith(_RESUMABLE_CHANGES))
    described = "; ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in sorted(changed))
    if allow_safe_changes and not unsafe:
        logger.warning("resuming %s with changed keys (--resume-with-changes): %s", output_dir, described)
        return
    ways_out = "resume it with its own config, or start a new run with another --output-dir (--no-resume overwrites)"
    if unsafe:
        ways_out += f"; these keys cannot change on resume: {', '.join(unsafe)}"
    else:
        ways_out += ", or pass --resume-with-changes (all the changed keys may change on resume)"
    raise ConfigError(f"{output_dir} holds a run started with another config ({described}): {ways_out}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or, with ``--eval-only``, exports the teacher of the newest checkpoint) as ``args`` say."""
    cfg = setup(args, write=False)
    if cfg.recipe.auto or cfg.recipe.budget_minutes > 0:
        _apply_recipe(cfg, args)
    if not args.no_resume and not args.eval_only:
        check_resume_config(cfg, allow_safe_changes=getattr(args, "resume_with_changes", False))
    use_cpu_threads(cfg)
    if distributed.is_main_process():
        write_config(cfg, cfg.train.output_dir)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = SSLMetaArch(cfg)
    model.prepare_for_distributed_training()
    logger.info("Model:\n%s", model, extra=FILE_ONLY)
    if args.eval_only:
        checkpointer = Checkpointer(cfg.train.output_dir)
        latest = checkpointer.latest()
        if latest is None:
            raise MissingPathError(f"--eval-only: no complete checkpoint under {checkpointer.directory}")
        extra = checkpointer.load(latest, model=model, restore_rng=False)
        do_test(cfg, model, f"manual_{extra['iteration']}")
        return {"iteration": extra["iteration"]}
    return do_train(cfg, model, resume=not args.no_resume)


if __name__ == "__main__":
    run_cli(main, get_args_parser(add_help=True))
