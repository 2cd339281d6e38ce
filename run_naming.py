"""Names a run gets from its config: its directory component and its label in plots, from its method and every
method switch it changes from that method's preset (`exp/walker_walk/pebble/...`, `qpa_query_scheme-uniform`).

Importing this module registers the `${method_dir:}` and `${method_label:}` resolvers that config/train_QPA.yaml's
run directory and the `run_label` key use, so whatever composes a config (train_QPA.py, command_line.py, and
through it scripts/sweep.py) names runs exactly as training does.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from config_rules import default_of
from config_schema import method_switches, schema

METHOD_DIR = Path(__file__).resolve().parent / "config" / "method"


def method_preset(name: str) -> dict[str, Any]:
    """The switch values of config/method/<name>.yaml (or of a preset an `imports` module stored), after its parents
    (its defaults list) and the schema's defaults."""
    return dict(_method_preset(name, method_switches()))


@functools.cache
def _method_preset(name: str, switches: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    values = {item.name: default_of(item) for item in fields(schema()) if item.name in switches}
    path = METHOD_DIR / f"{name}.yaml"
    stored = ConfigStore.instance().repo.get("method", {}).get(f"{name}.yaml")
    if path.exists():
        preset = OmegaConf.to_container(OmegaConf.load(path))
    elif stored is not None:
        preset = OmegaConf.to_container(stored.node)
    else:
        return tuple(values.items())
    for parent in preset.pop("defaults", []):
        if parent != "_self_":
            values.update(method_preset(parent))
    values.update({name: value for name, value in preset.items() if name in values})
    return tuple(values.items())


def method_run_dir(*, _root_: DictConfig) -> str:
    """Run-directory component: '' for plain QPA (the original release's layout), else the method and every switch
    changed from the method preset, e.g. 'pebble/' or 'qpa_query_scheme-uniform/'."""
    preset = method_preset(_root_.method)
    changed = [f"{name}-{value_name(_root_[name])}" for name in method_switches() if _root_[name] != preset[name]]
    if _root_.feed_type is not None:
        changed.append(f"feed_type-{_root_.feed_type}")
    parts = [_root_.method, *changed] + ([str(_root_.run_tag)] if _root_.run_tag else [])
    return "" if parts == ["qpa"] else "_".join(parts) + "/"


def value_name(value: Any) -> str:
    """A switch value as a directory name: lists (feedback_steps) as their items joined by '+'."""
    return "+".join(map(str, value)) if OmegaConf.is_list(value) or isinstance(value, list) else str(value)


def method_label(*, _root_: DictConfig) -> str:
    """The run's name in plots and tables: `method_run_dir` without the slash, 'qpa' for plain QPA."""
    return method_run_dir(_root_=_root_).rstrip("/") or "qpa"


OmegaConf.register_new_resolver("method_dir", method_run_dir, replace=True)
OmegaConf.register_new_resolver("method_label", method_label, replace=True)
