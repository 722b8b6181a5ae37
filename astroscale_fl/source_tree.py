"""Where the package runs from: a source checkout of this project, or an installation.

An installed package (a wheel in ``site-packages``) must never write next to its own files, nor
take the git repository some venv happens to sit in for its own; a checkout may do both.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

PROJECT_NAME = "astroscale-fl"


@lru_cache(maxsize=1)
def checkout_root() -> Path | None:
    """The repository root when the package runs from a checkout of this project (its pyproject.toml
    names ``astroscale-fl`` and it has ``.git``), else ``None`` (an installed package)."""
    root = Path(__file__).resolve().parent.parent
    try:
        with open(root / "pyproject.toml", "rb") as f:
            name = tomllib.load(f).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if name == PROJECT_NAME and (root / ".git").exists() else None
