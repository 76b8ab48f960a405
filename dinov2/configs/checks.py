"""Value checks of a merged config, run before anything is built: each value has the type of its default, and the
counts, rates and probabilities are in range. A mistake names the key, the value and what is expected."""

import math
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dinov2.errors import ConfigError

__all__ = ["check_types", "check_ranges"]

# key -> (lowest, highest, lowest allowed itself, highest allowed itself); keys absent from a config are skipped.
_AT_LEAST_ONE = (1, math.inf, True, False)
_NON_NEGATIVE = (0, math.inf, True, False)
_POSITIVE = (0, math.inf, False, False)
_PROBABILITY = (0, 1, True, True)
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    **dict.fromkeys(
        [
            "train.batch_size_per_gpu", "train.OFFICIAL_EPOCH_LENGTH", "optim.epochs", "student.patch_size",
            "crops.global_crops_size", "crops.local_crops_size", "evaluation.online_knn.k",
            *(f"{head}.{key}" for head in ("dino", "ibot") for key in (
                "head_n_prototypes", "head_bottleneck_dim", "head_nlayers", "head_hidden_dim"
            )),
        ],
        _AT_LEAST_ONE,
    ),
    **dict.fromkeys(
        [
            "train.num_workers", "train.cpu_threads", "train.saveckp_freq", "train.max_to_keep", "train.max_nan_steps",
            "train.seed",
            "student.depth",
            "student.block_chunks", "student.num_register_tokens", "student.layerscale", "optim.base_lr", "optim.lr",
            "optim.min_lr", "optim.weight_decay", "optim.weight_decay_end", "optim.warmup_epochs", "optim.clip_grad",
            "optim.freeze_last_layer_epochs", "optim.patch_embed_lr_mult", "crops.local_crops_number",
            "dino.loss_weight", "dino.koleo_loss_weight", "ibot.loss_weight", "teacher.warmup_teacher_temp_epochs",
            "recipe.budget_minutes", "evaluation.eval_period_iterations",
        ],
        _NON_NEGATIVE,
    ),
    **dict.fromkeys(
        ["teacher.teacher_temp", "teacher.warmup_teacher_temp", "evaluation.online_knn.temperature"], _POSITIVE
    ),
    **dict.fromkeys(
        [
            "teacher.momentum_teacher", "teacher.final_momentum_teacher", "ibot.mask_sample_probability",
            "student.drop_path_rate", "optim.layerwise_decay", "optim.adamw_beta1", "optim.adamw_beta2",
            "crops.global_crops_1_blur_p", "crops.global_crops_2_blur_p", "crops.local_crops_blur_p",
        ],
        _PROBABILITY,
    ),
}  # fmt: skip


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "section"
    return "string"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _fits(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``default``: same kind, where an integer is also a number and a string may
    hold digits (a path or a name)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, str):
        return isinstance(value, (str, int, float))
    if isinstance(default, ListConfig):
        return isinstance(value, ListConfig)
    if isinstance(default, DictConfig):
        return isinstance(value, DictConfig)
    return True


def _leaves(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, node in cfg.items_ex(resolve=False):
        full = f"{prefix}{key}"
        if isinstance(node, DictConfig):
            yield from _leaves(node, f"{full}.")
        elif not OmegaConf.is_interpolation(cfg, key):
            yield full, node


def check_types(base: DictConfig, override: DictConfig, source: str) -> None:
    """Every value of ``override`` has the type of the same key in ``base`` (keys ``base`` lacks are checked
    elsewhere). Raises ConfigError listing each wrong value."""
    wrong = []
    for key, value in _leaves(override):
        default = OmegaConf.select(base, key, throw_on_missing=False)
        if isinstance(value, ListConfig) and isinstance(default, ListConfig) and len(default):
            bad = [item for item in value if not _fits(default[0], item)]
            if bad:
                wrong.append(f"  {key}={value}: its items must be {_kind(default[0])}s like {default[0]!r}")
        elif not _fits(default, value):
            expected = f"{_a(_kind(default))}{' (true/false)' if isinstance(default, bool) else ''}"
            wrong.append(f"  {key}={value!r} is {_a(_kind(value))}; expected {expected} like {default!r}")
    if wrong:
        raise ConfigError(f"wrong type of config value(s) in {source}:\n" + "\n".join(wrong))


def check_ranges(cfg: DictConfig) -> None:
    """Counts >= 1, rates >= 0, probabilities and momenta in [0, 1], temperatures > 0; raises ConfigError listing
    each value out of range."""
    wrong = []
    for key, (low, high, low_ok, high_ok) in _RANGES.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        below = value < low or (value == low and not low_ok)
        above = value > high or (value == high and not high_ok)
        if below or above:
            lower = f"{'>=' if low_ok else '>'} {low}"
            bounds = lower if high == math.inf else f"in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
            wrong.append(f"  {key}={value} must be {bounds}")
    if wrong:
        raise ConfigError("config value(s) out of range:\n" + "\n".join(wrong))
