"""Packaged configurations: the pretraining defaults, training presets (``train/``) and eval architectures (``eval/``).

Config names are paths relative to this folder without ``.yaml`` (``"ssl_default_config"``, ``"train/vitl14"``,
``"eval/vits14_pretrain"``).
"""

import difflib
import pathlib

from omegaconf import DictConfig, ListConfig, OmegaConf

from dinov2.errors import ConfigError, MissingPathError

__all__ = ["load_config", "dinov2_default_config", "load_and_merge_config", "available_configs"]

_CONFIGS_DIR = pathlib.Path(__file__).parent.resolve()


def available_configs() -> list[str]:
    """Names accepted by ``load_config`` (sorted), e.g. ``train/vitl14``."""
    return sorted(str(p.relative_to(_CONFIGS_DIR).with_suffix("")) for p in _CONFIGS_DIR.rglob("*.yaml"))


def load_config(config_name: str) -> DictConfig:
    """Loads the packaged ``<config_name>.yaml``."""
    name = config_name[: -len(".yaml")] if config_name.endswith(".yaml") else config_name
    path = _CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise MissingPathError(f"no packaged config named {config_name!r}; available: {', '.join(available_configs())}")
    return OmegaConf.load(path)


dinov2_default_config = load_config("ssl_default_config")


def load_and_merge_config(config_name: str) -> DictConfig:
    """The defaults merged with the packaged ``config_name``; keys the defaults lack are an error."""
    return merge_strict(dinov2_default_config, load_config(config_name), source=f"config {config_name!r}")


def merge_strict(
    base: DictConfig,
    *overrides: DictConfig,
    source: str = "override",
    types_from: DictConfig | None = None,
    check_range: bool = True,
) -> DictConfig:
    """``OmegaConf.merge(base, *overrides)`` on a copy of ``base``, refusing keys that ``base`` does not have.

    The result is in struct mode, so reading or setting a misspelt key later raises too. An unknown key raises
    ConfigError naming the key, where it came from (``source``) and the closest existing keys; so does a value
    whose type differs from the one in ``types_from`` (default ``base``; pass the defaults when ``base`` is already
    a merged config, so that a config file's int cannot forbid a float later), or, with ``check_range``, a count,
    rate or probability out of range in the result (see ``checks``).
    """
    from dinov2.configs.checks import check_ranges, check_types

    merged = OmegaConf.create(base)
    valid_keys = _flat_keys(merged)
    for override in overrides:
        unknown = _unknown_keys(merged, override)
        if unknown:
            raise ConfigError(_unknown_keys_message(unknown, valid_keys, source))
        if isinstance(override, DictConfig):
            check_types(merged if types_from is None else types_from, override, source)
    OmegaConf.set_struct(merged, True)
    merged = OmegaConf.merge(merged, *overrides)
    if check_range:
        check_ranges(merged)
    return merged


def _flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items_ex(resolve=False):
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(_flat_keys(value, prefix=f"{full}."))
    return keys


def _unknown_keys(base: DictConfig, override: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    if not isinstance(override, DictConfig):
        return []
    unknown = []
    for key, value in override.items_ex(resolve=False):
        full = f"{prefix}{key}"
        if key not in base:
            unknown.append(full)
        elif isinstance(value, DictConfig) and isinstance(base[key], DictConfig):
            unknown.extend(_unknown_keys(base[key], value, prefix=f"{full}."))
    return unknown


def _unknown_keys_message(unknown: list[str], valid_keys: list[str], source: str) -> str:
    lines = [f"unknown config key(s) in {source} (every key must exist in ssl_default_config.yaml):"]
    for key in unknown:
        leaf = key.rsplit(".", 1)[-1]
        same_leaf = [k for k in valid_keys if k.rsplit(".", 1)[-1] == leaf]
        similar = difflib.get_close_matches(key, valid_keys, n=3, cutoff=0.6)
        close = (same_leaf + [k for k in similar if k not in same_leaf])[:3]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        lines.append(f"  {key}{hint}")
    return "\n".join(lines)
