"""Configuration: compose the Hydra tree under ``conf/`` and merge it onto its schemas.

``conf/config.yaml`` composes one choice per group (task, model, strategy, partition,
privacy, federation, train). After composition :func:`merge_schemas` checks the whole config against
dataclass schemas (one per choice of a group, picked by its ``name``; defaults live in the YAML
alone): those of :mod:`astroscale_fl.config_schema`, and for the strategy and privacy groups the
owners' own frozen settings classes (:func:`schema_of`), assembled by
:func:`astroscale_fl.run_config.validate`. Unknown keys, ill-typed values and out-of-range values
(each owner's check) are rejected with a one-line :class:`ConfigError` naming the key and what was
expected.

The same tree configures ``astroscale-fl train`` (a Hydra app), Hydra multiruns and
``flwr run .`` (its run-config carries Hydra overrides), so there is one source of truth.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from astroscale_fl.config_schema import SECTIONS, TOP_LEVEL
from astroscale_fl.errors import ConfigError, one_line

# ---- locating and composing the tree -----------------------------------------------------


def conf_dir(holding: str = "config.yaml") -> Path:
    """The ``conf/`` tree: ``$ASTROSCALE_FL_CONF``, the repository's, or the copy inside a wheel.

    ``holding``: what the caller reads there (the training config's ``config.yaml``; the ingest's
    sources need only ``source/``); a tree without it is a one-line :class:`ConfigError`."""
    env = os.environ.get("ASTROSCALE_FL_CONF")
    here = Path(__file__).resolve().parent
    path = Path(env) if env else next((p for p in (here.parent / "conf", here / "conf") if p.is_dir()), here.parent / "conf")
    if not (path / holding).exists():
        raise ConfigError(f"config tree not found: {path}/{holding} (set ASTROSCALE_FL_CONF to the conf/ directory)")
    return path


def noise_overrides_target(overrides: list[str]) -> list[str]:
    """``privacy.noise_multiplier=1.1`` given without ``privacy.target_epsilon`` wins over the
    default target: the target is set to null instead of "set exactly one of" an error."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    given = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+") == "privacy.noise_multiplier"]
    if given and given[-1].strip().lower() not in ("null", "none", "") and "privacy.target_epsilon" not in keys:
        return [*overrides, "privacy.target_epsilon=null"]
    return list(overrides)


def compose(overrides: list[str] | str = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (list or one shell-quoted string)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    overrides = noise_overrides_target([o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as exc:  # Hydra raises several types; all are the user's override mistakes
        msg = one_line(str(exc)).split(" Config search path")[0]
        raise ConfigError(f"bad override in {list(overrides)}: {msg}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def require(ok: bool, key: str, expected: str, value) -> None:
    """Raise a one-line ConfigError naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


# ---- validation ---------------------------------------------------------------------------


@lru_cache(maxsize=None)
def schema_of(settings: type, named: bool = True) -> type:
    """The config schema of an owner's frozen settings dataclass: its fields and types, a ``name``
    field first when the class is a group's choice (``named``), and mutable, since OmegaConf makes a
    frozen dataclass's nodes read-only and a merge writes into them. So a setting is defined once, by
    the class that checks it (:class:`~astroscale_fl.federation.strategy_params.FedProxParams`,
    :class:`~astroscale_fl.privacy.settings.DpSgdSettings`, ...)."""
    hints = typing.get_type_hints(settings)
    fields = [("name", str)] if named else []
    for field in dataclasses.fields(settings):
        hint = hints[field.name]
        fields.append((field.name, schema_of(hint, named=False) if dataclasses.is_dataclass(hint) else hint))
    return dataclasses.make_dataclass(settings.__name__, fields)


def merge_section(section: Any, key: str, schema: type) -> DictConfig:
    """``section`` (the config's ``key``) merged onto ``schema``: typed values, or a one-line
    :class:`ConfigError` naming the key on an unknown key or an ill-typed value."""
    _check_booleans(section, key, schema)
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), section)
    except OmegaConfBaseException as exc:
        msg = one_line(str(exc)).split(" full_key:")[0]
        sub = getattr(exc, "full_key", None)
        where = f"{key}.{sub}" if sub else key
        raise ConfigError(f"{where}: {msg} (schema {schema.__name__})") from None


def _check_booleans(section: Any, key: str, schema: type) -> None:
    """A flag must be true or false: OmegaConf would take ``2`` or ``"yes"`` for a bool."""
    if not isinstance(section, (DictConfig, dict)):
        return
    for name, hint in typing.get_type_hints(schema).items():
        value = section.get(name) if name in section else None
        if hint in (bool, Optional[bool]) and value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}.{name}: expected true or false, got {value!r}")
        if dataclasses.is_dataclass(hint):
            _check_booleans(value, f"{key}.{name}", hint)


def merge_schemas(cfg: DictConfig, schemas: dict[str, dict[str, type]], without: tuple[str, ...] = ()) -> dict[str, Any]:
    """Merge a composed config onto the schemas: each group onto the schema its ``name`` picks from
    ``schemas`` (group -> choice -> schema), each section onto its own, the top-level keys checked for
    type. Raises a one-line :class:`ConfigError` on unknown keys, unknown choices and ill-typed values;
    the owners' checks are :func:`astroscale_fl.run_config.validate`'s.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    known = (set(schemas) | set(SECTIONS) | set(TOP_LEVEL) | {"mode"}) - set(without)
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; expected some of {sorted(known)}")
    out: dict[str, Any] = {}
    for group, choices in schemas.items():
        if group in without:
            continue
        section = cfg.get(group)
        name = section.get("name") if isinstance(section, DictConfig) else None
        if name not in choices:
            raise ConfigError(f"{group}: unknown choice {name!r}; expected one of {sorted(choices)}")
        out[group] = merge_section(cfg[group], group, choices[name])
    for key, schema in SECTIONS.items():
        if key not in cfg:
            raise ConfigError(f"{key}: section missing from the config; expected the keys of {schema.__name__}")
        out[key] = merge_section(cfg[key], key, schema)
    for key, typ in TOP_LEVEL.items():
        value = cfg.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
        out[key] = value
    out["mode"] = cfg.get("mode")
    return out


def check_missing(cfg: DictConfig, groups: tuple[str, ...]) -> None:
    """Every schema field needs a value: not ``???`` (task.path, partition.column), not absent from the YAML.
    ``groups``: the config groups (their message names the choice)."""
    for group in (g for g in (*groups, *SECTIONS) if g in cfg):
        for key in (k for k in cfg[group] if OmegaConf.is_missing(cfg[group], k)):
            choice = f" for {group}={cfg[group].name}" if group in groups else ""
            raise ConfigError(f"{group}.{key}: a value is required{choice} (e.g. {group}.{key}=...)")


_JSON: dict[tuple[int, tuple[str, ...] | None, tuple[str, ...]], tuple[DictConfig, str]] = {}


def to_json(cfg: DictConfig, sections: tuple[str, ...] | None = None, without: tuple[str, ...] = ()) -> str:
    """The config (its top-level ``sections`` when given, less the groups in ``without``) as compact,
    sorted JSON, remembered per config object: simulated nodes ask for it with every message, and
    converting an OmegaConf node costs ~1 ms."""
    key = (id(cfg), sections, without)
    hit = _JSON.get(key)
    if hit is None or hit[0] is not cfg:
        picked = cfg if sections is None else OmegaConf.create({name: cfg[name] for name in sections})
        container = {k: v for k, v in OmegaConf.to_container(picked, resolve=True).items() if k not in without}
        text = json.dumps(container, sort_keys=True, separators=(",", ":"))
        if len(_JSON) > 64:
            _JSON.clear()
        hit = _JSON[key] = (cfg, text)  # holds cfg, so its id is not reused while the entry lives
    return hit[1]
