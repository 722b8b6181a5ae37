"""Source registry: loads and validates ``conf/source/<name>.yaml``.

The conf directory is :func:`astroscale_fl.config.conf_dir` (``$ASTROSCALE_FL_CONF`` if set, else the repository's ``conf/``).
Each YAML names the protocol (``tap``, ``skyserver`` or ``file``), the public endpoint, the
table (or file), and ``columns``: a mapping from common-schema column to the archive's
expression or column name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from astroscale_fl.config import conf_dir
from astroscale_fl.errors import ConfigError
from astroscale_fl.ingest.schema import MAPPABLE, REQUIRED
from astroscale_fl.ingest.transport import TransportSettings

PROTOCOLS = ("tap", "skyserver", "file")
_KEYS = {
    "name", "survey", "release", "description", "protocol", "endpoint", "table", "columns",
    "base_where", "format", "sync_max_rows", "default_limit", "null_values", "transport",
    "cache_ttl_s", "filename", "hdu", "checksum_file", "checksum_algorithm", "checksum",
    "segment_mb",
}


def available_sources() -> list[str]:
    """Names of the sources with a YAML file under ``conf/source``."""
    return sorted(p.stem for p in (conf_dir("source") / "source").glob("*.yaml"))


@dataclass
class SourceConfig:
    """One archive source, as read from its YAML file."""

    name: str
    survey: str
    release: str
    protocol: str
    endpoint: str
    columns: dict[str, str]
    path: Path
    description: str = ""
    table: str = ""
    base_where: str = ""
    format: str = "csv"
    sync_max_rows: int = 2000
    default_limit: int | None = 100_000
    null_values: list[float] = field(default_factory=list)
    transport: TransportSettings = field(default_factory=TransportSettings)
    cache_ttl_s: float = 7 * 86400
    filename: str = ""
    hdu: int | str = 1
    checksum_file: str | None = None
    checksum_algorithm: str = "sha1"
    checksum: str | None = None
    segment_mb: float = 64.0


def load_source(name: str) -> SourceConfig:
    """Load and validate ``conf/source/<name>.yaml``; errors name the file and the field."""
    path = conf_dir("source") / "source" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown source {name!r}: no {path} (available: {', '.join(available_sources()) or 'none'})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    for key in ("survey", "release", "protocol", "endpoint", "columns"):
        if key not in raw:
            raise ConfigError(f"{path}: missing required key '{key}'")
    if raw["protocol"] not in PROTOCOLS:
        raise ConfigError(f"{path}: protocol must be one of {PROTOCOLS}, got {raw['protocol']!r}")
    cols = raw["columns"]
    if not isinstance(cols, dict) or not cols:
        raise ConfigError(f"{path}: 'columns' must map common column names to archive columns")
    bad = sorted(set(cols) - set(MAPPABLE))
    if bad:
        raise ConfigError(f"{path}: columns {bad} are not in the common schema {MAPPABLE}")
    lacking = [c for c in REQUIRED if c not in cols]
    if lacking:
        raise ConfigError(f"{path}: 'columns' must map {lacking}")
    fmt = raw.get("format", "csv")
    if fmt not in ("csv", "votable"):
        raise ConfigError(f"{path}: format must be 'csv' or 'votable', got {fmt!r}")
    if raw["protocol"] in ("tap", "skyserver") and not raw.get("table"):
        raise ConfigError(f"{path}: protocol {raw['protocol']} needs 'table'")
    if raw["protocol"] == "file" and not raw.get("filename"):
        raise ConfigError(f"{path}: protocol file needs 'filename'")
    values = {k: v for k, v in raw.items() if k not in ("transport", "name")}
    values["columns"] = {str(k): str(v) for k, v in cols.items()}
    values["null_values"] = [float(v) for v in raw.get("null_values") or []]
    values["transport"] = TransportSettings.from_mapping(raw.get("transport"), f"{path}: transport")
    return SourceConfig(name=name, path=path, **values)
