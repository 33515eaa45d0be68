"""Loading the sidecar's configuration file and noticing when it changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from shoal.api.routerconfig import RouterConfig


class InvalidConfig(Exception):
    """The file is missing, unreadable or fails validation: fix the file (the router keeps
    serving with the previous configuration when this happens on a reload)."""


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate a config file: JSON, or YAML when the name ends in .yaml/.yml."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        return RouterConfig.model_validate(data)
    except (OSError, ValueError, yaml.YAMLError, ValidationError) as exc:
        raise InvalidConfig(f"{path}: {exc}") from exc


def file_signature(paths: list[str | Path]) -> tuple:
    """A cheap fingerprint of files (following symlinks, as a Kubernetes ConfigMap or
    Secret volume swaps a symlink on update): changes when any of them changes."""
    signature = []
    for path in paths:
        try:
            st = os.stat(path)
            signature.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            signature.append((str(path), None))
    return tuple(signature)
