"""A training command line, composed as Hydra will compose it, and its errors in one line.

Hydra reports an unknown key, an unknown group option, a value of the wrong type or a malformed override in several
lines with a traceback; here each becomes one ConfigError line that names the closest valid names, before any work
starts. The modules of the `imports` key are imported first, since their methods' keys, schemes, steps and presets
must be registered before the config is composed; the built-in methods (`methods/`) always are.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, ValidationError

import methods  # noqa: F401 (the built-in methods register their keys, query schemes, steps and extensions)
import run_naming  # noqa: F401 (the run directory's and run_label's resolvers)
import utils
from config_rules import ConfigError, Names, boolean, fail
from config_schema import check_config, nested_rule, store_schema, type_error_line

CONFIG_DIR = Path(__file__).resolve().parent / "config"
MODULE_NAME = Names(described="a module to import (a dotted name on the Python path)")


def import_modules(names: Iterable[str]) -> None:
    """Import the modules of the `imports` key, whose keys, query schemes, feedback steps and method presets
    register themselves as they load, and register the schema with their keys. The current directory is searched
    too, as `python -m` does."""
    names = list(names)
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        problem = MODULE_NAME([name])
        if problem:
            fail("imports", names, problem)
        try:
            importlib.import_module(name)
        except Exception as error:  # a missing module, or an error while it runs
            reason = str(error).splitlines()[0] if str(error) else ""
            fail("imports", names, f"importing {name} failed ({type(error).__name__}: {reason})")
    store_schema()


def requested_imports(overrides: list[str]) -> list[str]:
    """The modules an `imports=...` command-line override names, before any config is composed (a method preset of
    one of them must exist when Hydra looks it up)."""
    names: list[str] = []
    for item in overrides:
        name, _, value = item.partition("=")
        if name.lstrip("+") == "imports" and value:
            try:
                parsed = OverridesParser.create().parse_override(f"imports={value}").value()
            except HydraException:
                fail("imports", value, "must be a list of module names, e.g. imports=[my_module]")
            names += [str(module) for module in parsed] if isinstance(parsed, list) else [str(parsed)]
    return names


def compose_checked(overrides: list[str], config_name: str = "train_QPA") -> DictConfig:
    """Compose the config from command-line `overrides` as Hydra will and check it: Hydra's multi-line errors (an
    unknown key or group option, a value of the wrong type, a malformed override) become one ConfigError line that
    names the closest valid names. Returns the composed config, Hydra's node included."""
    import_modules(requested_imports(overrides))
    try:
        check_boolean_overrides(overrides)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
            cfg = compose(config_name, overrides, return_hydra_config=True)
            if utils.is_metaworld(str(cfg.env)) and not any(item.startswith("agent=") for item in overrides):
                cfg = compose(config_name, [*overrides, "agent=sac_metaworld"], return_hydra_config=True)
    except MissingConfigException as error:
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", str(error))
        if not found or not error.options:
            raise ConfigError(str(error).splitlines()[0]) from None
        group, option = found.groups()
        close = difflib.get_close_matches(option, error.options, n=1)
        hint = f"; did you mean {group}={close[0]}?" if close else ""
        raise ConfigError(f"{group}={option!r} is invalid: allowed: {', '.join(error.options)}{hint}") from None
    except HydraException as error:
        raise ConfigError(composition_error_line(error, config_name)) from None
    check_config(cfg)
    return cfg


def check_boolean_overrides(overrides: list[str]) -> None:
    """A boolean key takes true or false on the command line: OmegaConf would read yes, on, 1 or 2 as true."""
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() or override.is_delete():
            continue
        if nested_rule(override.key_or_group) is boolean:
            value = override.value()
            problem = boolean(value)
            if problem:
                fail(override.key_or_group, value, problem)


def composition_error_line(error: HydraException, config_name: str) -> str:
    if isinstance(error.__cause__, ValidationError):
        # A value Hydra could not convert to the key's type; the error's own value, since a key given twice is
        # checked at each of its values.
        return type_error_line(error.__cause__)
    unknown = re.match(r"Could not override '([^']+)'", str(error))
    if not unknown:
        return f"the command line could not be read: {str(error).splitlines()[0]}"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        known = flat_keys(OmegaConf.to_container(compose(config_name, [])))
    name = unknown.group(1)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{name} is not a config key{hint} (a new key needs +{name}=...)"


def select_agent_config(cfg: DictConfig) -> DictConfig:
    """Inside a Hydra run: Meta-World tasks use the Meta-World SAC config unless the command line picked an agent
    itself (as compose_checked does outside one)."""
    overrides = list(HydraConfig.get().overrides.task)
    if not utils.is_metaworld(str(cfg.env)) or any(item.startswith("agent=") for item in overrides):
        return cfg
    return compose(config_name="train_QPA", overrides=[*overrides, "agent=sac_metaworld"])


def check_overrides(overrides: list[str]) -> None:
    """`compose_checked`, and a run directory that cannot be written is refused too."""
    cfg = compose_checked(overrides)
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir")).absolute()
    try:  # Hydra creates it next anyway; access() cannot tell, for root, that /proc takes no new folders
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"{run_dir} is not writable")
    except OSError as error:
        fail("hydra.run.dir", str(run_dir), f"cannot create or write it ({error.strerror or error})")


def flat_keys(config: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of a nested mapping's leaves."""
    keys = []
    for name, value in config.items():
        keys += flat_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return keys
