"""Config assembly for the training and eval entry points: defaults < config file < command-line overrides."""

import argparse
import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dinov2 import distributed
from dinov2.configs import _CONFIGS_DIR, available_configs, dinov2_default_config, merge_strict
from dinov2.configs.checks import check_ranges
from dinov2.errors import ConfigError, MissingPathError
from dinov2.logging import FILE_ONLY, setup_logging
from dinov2.utils.rng import fix_random_seeds
from dinov2.utils.utils import get_sha

logger = logging.getLogger("dinov2")

__all__ = [
    "apply_scaling_rules_to_cfg",
    "write_config",
    "get_cfg_from_args",
    "get_explicit_cfg",
    "resolve_config_file",
    "default_setup",
    "setup",
]

_SCALING_RULES = ("sqrt_wrt_1024",)


def apply_scaling_rules_to_cfg(cfg: DictConfig) -> DictConfig:
    """Sets ``optim.lr`` from ``optim.base_lr`` for the global batch (batch_size_per_gpu x world size), in place.

    The derived value is logged and ends up in the saved config.yaml, so the file records the lr actually used.
    """
    rule = cfg.optim.scaling_rule
    if rule != "sqrt_wrt_1024":
        raise ConfigError(f"unsupported optim.scaling_rule {rule!r}; the supported rule is {_SCALING_RULES[0]!r}")
    global_batch = cfg.train.batch_size_per_gpu * distributed.get_global_size()
    cfg.optim.lr = cfg.optim.base_lr * math.sqrt(global_batch / 1024.0)
    logger.info(
        "sqrt scaling rule: optim.lr = %s * sqrt(%d / 1024) = %s", cfg.optim.base_lr, global_batch, cfg.optim.lr
    )
    return cfg


def write_config(cfg: DictConfig, output_dir: str | os.PathLike, name: str = "config.yaml") -> str:
    """Logs ``cfg`` and writes it as YAML to ``<output_dir>/<name>`` (atomically); returns the path."""
    logger.info("config:\n%s", OmegaConf.to_yaml(cfg), extra=FILE_ONLY)
    path = Path(output_dir) / name
    tmp = path.with_name(f".{path.name}.tmp")
    OmegaConf.save(config=cfg, f=tmp)
    os.replace(tmp, path)
    return str(path)


def resolve_config_file(config_file: str) -> Path:
    """A path, or the name of a packaged config (``train/vitl14``) when no such file exists."""
    path = Path(config_file)
    if path.is_file():
        return path
    packaged = _CONFIGS_DIR / (config_file if config_file.endswith(".yaml") else f"{config_file}.yaml")
    if packaged.is_file():
        return packaged
    raise MissingPathError(
        f"--config-file {config_file!r} is neither a file nor a packaged config; packaged configs: "
        f"{', '.join(available_configs())}"
    )


def _parse_opts(opts: list[str]) -> DictConfig:
    bad = [opt for opt in opts if "=" not in opt or opt.startswith("=")]
    if bad:
        raise ConfigError(f"config overrides must look like key.sub=value (e.g. optim.base_lr=0.001), got {bad}")
    return OmegaConf.from_dotlist(list(opts))


def get_cfg_from_args(args: argparse.Namespace) -> DictConfig:
    """The run's config: ``ssl_default_config.yaml`` < ``args.config_file`` < ``args.opts`` (``key=value`` items).

    ``args.config_file`` may be empty (defaults only) or a packaged config name. Keys that the defaults do not
    have are an error naming the key and its closest matches. ``args.output_dir`` is made absolute and written to
    ``train.output_dir``, overriding any other value. The result is in struct mode.
    """
    args.output_dir = os.path.abspath(getattr(args, "output_dir", "") or "")
    config_file = getattr(args, "config_file", "") or ""
    if config_file:
        path = resolve_config_file(config_file)
        file_cfg = OmegaConf.load(path)
        cfg = merge_strict(dinov2_default_config, file_cfg, source=f"config file {str(path)!r}", check_range=False)
    else:
        cfg = merge_strict(dinov2_default_config)
    opts = list(getattr(args, "opts", None) or [])
    if opts:
        cfg = merge_strict(
            cfg, _parse_opts(opts), source="command-line overrides", types_from=dinov2_default_config, check_range=False
        )
    check_ranges(cfg)  # once, on the result: an override may correct a file's value
    cfg.train.output_dir = args.output_dir
    return cfg


def get_explicit_cfg(args: argparse.Namespace) -> DictConfig:
    """Only what the config file and the command-line overrides set (no defaults): the keys a user chose."""
    config_file = getattr(args, "config_file", "") or ""
    explicit = OmegaConf.load(resolve_config_file(config_file)) if config_file else OmegaConf.create()
    opts = list(getattr(args, "opts", None) or [])
    return OmegaConf.merge(explicit, _parse_opts(opts)) if opts else explicit


def default_setup(args: argparse.Namespace, seed: int = 0) -> None:
    """Joins the process group when launched by torchrun / SLURM (one process needs none), sets up logging into
    ``args.output_dir``, seeds every RNG with ``seed + rank`` and logs the git state and the arguments."""
    distributed.enable(overwrite=True)
    setup_logging(output=args.output_dir, level=logging.INFO)
    fix_random_seeds(seed + distributed.get_global_rank())
    logger.info("git:\n  %s\n", get_sha())
    logger.info("\n".join(f"{key}: {value}" for key, value in sorted(vars(args).items())), extra=FILE_ONLY)


def setup(args: argparse.Namespace, write: bool = True) -> DictConfig:
    """The training's setup: config from ``args`` (see :func:`get_cfg_from_args`), output folder, process group,
    logging, seeds (``train.seed`` + rank), the lr scaling rule, and ``<output_dir>/config.yaml`` (which thus holds
    the ``optim.lr`` used and reproduces the run; ``write=False`` leaves that to the caller)."""
    cfg = get_cfg_from_args(args)
    os.makedirs(args.output_dir, exist_ok=True)
    default_setup(args, seed=int(cfg.train.seed))
    apply_scaling_rules_to_cfg(cfg)
    if write and distributed.is_main_process():
        write_config(cfg, args.output_dir)
    return cfg
