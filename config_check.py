"""Validate a resolved training config before any environment or network is built.

Every rejection is one line naming the key, the bad value and what is allowed, so a typo on a
command line costs seconds, not a crashed run hours later.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

import utils
from queries import QUERY_SCHEMES, feed_types, scheme_for_feed_type
from reward_model import QPA_CROP_SHRINK

ACTIVATIONS = ("tanh", "sig", "relu")
REWARD_SOURCES = ("learned", "true")
# Top-level keys that switch a method's behaviour; each one changed from the method preset names the run directory.
METHOD_SWITCHES = (
    "reward_source", "query_scheme", "hybrid_replay", "data_aug_ratio", "ensemble_size", "large_batch",
    "semi_supervised", "threshold_u", "mu", "lambda_u", "crop_range", "dataaug_window",
    "rune_beta_init", "rune_beta_decay",
)  # fmt: skip
DMC_EPISODE_STEPS = 1000
METAWORLD_EPISODE_STEPS = 500


class ConfigError(ValueError):
    """A config value that cannot work; the message is a single line."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def check_overrides(overrides: list[str], config_dir: Path, config_name: str = "train_QPA") -> None:
    """Compose the config from command-line `overrides` as Hydra will, and turn Hydra's multi-line composition
    errors (an unknown key, an unknown group option, a malformed override) into one ConfigError line that names
    the closest valid names; also reject a run directory that cannot be written."""
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=config_name):
            cfg = compose(config_name, overrides, return_hydra_config=True)
    except MissingConfigException as error:
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", str(error))
        if not found or not error.options:
            raise ConfigError(str(error).splitlines()[0]) from None
        group, option = found.groups()
        close = difflib.get_close_matches(option, error.options, n=1)
        hint = f"; did you mean {group}={close[0]}?" if close else ""
        raise ConfigError(f"{group}={option!r} is invalid: allowed: {', '.join(error.options)}{hint}") from None
    except HydraException as error:
        message = str(error)
        unknown = re.match(r"Could not override '([^']+)'", message)
        if not unknown:
            raise ConfigError(f"the command line could not be read: {message.splitlines()[0]}") from None
        key = unknown.group(1)
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=config_name):
            known = _flat_keys(OmegaConf.to_container(compose(config_name, [])))
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"{key} is not a config key{hint} (a new key needs +{key}=...)") from None
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir")).absolute()
    try:  # Hydra creates it next anyway; access() cannot tell, for root, that /proc takes no new folders
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"{run_dir} is not writable")
    except OSError as error:
        _fail("hydra.run.dir", str(run_dir), f"cannot create or write it ({error.strerror or error})")


def _flat_keys(config: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def _require_int(key: str, value: Any, minimum: int = 1, whole_floats: bool = True) -> None:
    """An integer >= minimum. A whole float (YAML reads 1e6 as one) passes for the schedule keys, which the loop
    casts; network and batch sizes reach torch and numpy as they are, so they must be ints (whole_floats=False)."""
    kinds = int | float if whole_floats else int
    if isinstance(value, bool) or not isinstance(value, kinds) or value != int(value) or value < minimum:
        _fail(key, value, f"must be an integer >= {minimum}")


def _require_number(
    key: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = True
) -> None:
    """A real number between low and high (inclusive at high; at low, exclusive unless low_open is False);
    either bound may be None."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    ok = ok and (low is None or value > low or (not low_open and value == low)) and (high is None or value <= high)
    if ok:
        return
    if low is None:
        allowed = "any number" if high is None else f"a number <= {high}"
    elif high is None:
        allowed = f"a number {'>' if low_open else '>='} {low}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low}, {high}]"
    _fail(key, value, f"must be {allowed}")


def _require_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, value, "must be true or false")


def _require_name(key: str, value: Any, pattern: str, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, str | int) or not re.fullmatch(pattern, str(value)):
        _fail(key, value, allowed)


def _check_agent(cfg: DictConfig) -> None:
    """SAC's hyper-parameters and network sizes (`agent.params.*`, `*.params.hidden_*`)."""
    params = cfg.agent.params
    for key in ("batch_size", "actor_update_frequency", "critic_target_update_frequency"):
        _require_int(f"agent.params.{key}", params[key], whole_floats=False)
    for key in ("actor_lr", "critic_lr", "alpha_lr", "init_temperature"):
        _require_number(f"agent.params.{key}", params[key], low=0.0)
    for key in ("discount", "critic_tau"):
        _require_number(f"agent.params.{key}", params[key], low=0.0, high=1.0)
    for key in ("actor_betas", "critic_betas", "alpha_betas"):
        betas = params[key]
        if len(betas) != 2 or not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas):
            _fail(f"agent.params.{key}", OmegaConf.to_container(betas), "must be two numbers in [0, 1)")
    for key in ("learnable_temperature", "normalize_state_entropy"):
        _require_bool(f"agent.params.{key}", params[key])
    for network in ("double_q_critic", "diag_gaussian_actor"):
        for key in ("hidden_dim", "hidden_depth"):
            _require_int(f"{network}.params.{key}", cfg[network].params[key], whole_floats=False)
    low, high = cfg.diag_gaussian_actor.params.log_std_bounds
    if not (isinstance(low, int | float) and isinstance(high, int | float) and low < high):
        _fail("diag_gaussian_actor.params.log_std_bounds", [low, high], "must be [low, high] with low < high")
    if cfg.replay_buffer_capacity < params.batch_size:
        _fail("replay_buffer_capacity", cfg.replay_buffer_capacity,
              f"must be >= agent.params.batch_size ({params.batch_size})")  # fmt: skip


def episode_steps(env_name: str) -> int:
    return METAWORLD_EPISODE_STEPS if utils.is_metaworld(env_name) else DMC_EPISODE_STEPS


def resolve_query_scheme(cfg: DictConfig) -> str:
    """`feed_type` (B-Pref numbering) wins over `query_scheme` when it is set."""
    if cfg.feed_type is None:
        return cfg.query_scheme
    return scheme_for_feed_type(int(cfg.feed_type))


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line) for the first value that cannot work."""
    try:
        utils.canonical_env_name(cfg.env)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    _check_types(cfg)
    max_steps = episode_steps(cfg.env)
    _check_schedule(cfg, max_steps)
    _require_number("her_ratio", cfg.her_ratio, 0.0, 1.0, low_open=False)
    _require_number("teacher_gamma", cfg.teacher_gamma, 0.0, 1.0)
    for key in ("teacher_eps_mistake", "teacher_eps_skip", "teacher_eps_equal", "label_margin"):
        _require_number(key, cfg[key], 0.0, 1.0, low_open=False)
    if cfg.explore is not False:
        _require_number("explore", cfg.explore, 0.0, 1.0)

    _check_choices(cfg)
    _check_surf(cfg, max_steps)
    _check_rune(cfg)
    try:
        utils.choose_device(cfg.device, strict=cfg.strict_device)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_types(cfg: DictConfig) -> None:
    """Integers, booleans, names and numbers of the top-level keys and of the agent."""
    for key in (
        "num_train_steps",
        "num_interact",
        "reward_update",
        "segment",
        "eval_frequency",
        "replay_buffer_capacity",
        "reward_train_batch",
        "ensemble_size",
        "max_reward_buffer_size",
        "topK",
        "gradient_update",
        "reward_hidden_dim",
        "num_eval_episodes",
        "large_batch",
    ):
        _require_int(key, cfg[key])
    for key in ("hybrid_replay", "strict_device", "log_save_tb", "wandb", "save_checkpoint", "resume", "overwrite",
                "save_model"):  # fmt: skip
        _require_bool(key, cfg[key])
    for key in (
        "num_seed_steps",
        "num_unsup_steps",
        "reset_update",
        "data_aug_ratio",
        "reward_hidden_depth",
        "seed",
    ):
        _require_int(key, cfg[key], 0)
    if cfg.reward_source == "learned":
        _require_int("max_feedback", cfg.max_feedback, 1)
        _require_int("reward_batch", cfg.reward_batch, 1)
        if cfg.reward_batch > cfg.max_feedback:
            _fail("reward_batch", cfg.reward_batch, f"must be <= max_feedback ({cfg.max_feedback})")

    # run_tag becomes part of a directory name; W&B refuses these characters in a project or entity name.
    _require_name("run_tag", cfg.run_tag, r"[\w.=+-]*", "must be letters, digits and ._=+- only (it names a directory)")
    _require_name(
        "wandb_project", cfg.wandb_project, r"[^/\\#?%:\s]+", "must be a non-empty name without /\\#?%: or spaces"
    )
    if cfg.wandb_entity is not None:
        _require_name("wandb_entity", cfg.wandb_entity, r"[^/\\#?%:\s]+", "must be null or a W&B user or team name")

    _check_agent(cfg)
    _require_number("reward_lr", cfg.reward_lr, low=0.0)
    _require_number("teacher_beta", cfg.teacher_beta)


def _check_schedule(cfg: DictConfig, max_steps: int) -> None:
    """What the episode length allows: the first queries, the segment length, temporal cropping."""
    first_feedback = cfg.num_seed_steps + cfg.num_unsup_steps
    if cfg.reward_source == "learned" and first_feedback < max_steps:
        _fail(
            "num_unsup_steps",
            cfg.num_unsup_steps,
            f"num_seed_steps + num_unsup_steps must be >= the episode length "
            f"of {cfg.env} ({max_steps} steps): the first queries need one complete episode",
        )
    if cfg.segment >= max_steps:
        _fail("segment", cfg.segment, f"must be < the episode length of {cfg.env} ({max_steps} steps)")
    longest_cut = QPA_CROP_SHRINK[1]
    if cfg.data_aug_ratio > 0 and cfg.segment <= longest_cut:
        _fail("segment", cfg.segment, f"must be >= {longest_cut + 1} for temporal cropping (or set data_aug_ratio=0)")


def _check_choices(cfg: DictConfig) -> None:
    """Keys that take one of a set of names or numbers."""
    if cfg.activation not in ACTIVATIONS:
        _fail("activation", cfg.activation, f"allowed: {', '.join(ACTIVATIONS)}")
    if cfg.query_scheme not in QUERY_SCHEMES:
        _fail("query_scheme", cfg.query_scheme, f"allowed: {', '.join(QUERY_SCHEMES)}")
    numbers = feed_types()
    if cfg.feed_type is not None and (isinstance(cfg.feed_type, bool) or cfg.feed_type not in numbers):
        named = ", ".join(f"{number} {name}" for number, name in sorted(numbers.items()))
        _fail("feed_type", cfg.feed_type, f"allowed: null or B-Pref's numbers: {named}")
    if cfg.reward_schedule not in (0, 1, 2):
        _fail("reward_schedule", cfg.reward_schedule, "allowed: 0 (fixed), 1 (shrinking), 2 (growing)")
    if cfg.reward_source not in REWARD_SOURCES:
        hint = " (a bare true is a boolean: write reward_source=\"'true'\" or use method=sac_true)"
        _fail(
            "reward_source",
            cfg.reward_source,
            f"allowed: {', '.join(REWARD_SOURCES)}" + (hint if cfg.reward_source is True else ""),
        )
    if cfg.num_threads is not None:
        _require_int("num_threads", cfg.num_threads, 1)
    if cfg.history_episodes is not None:
        _require_int("history_episodes", cfg.history_episodes, 1)


def _check_surf(cfg: DictConfig, max_steps: int) -> None:
    _require_bool("semi_supervised", cfg.semi_supervised)
    # max(P) of two outcomes is never below 0.5
    _require_number("threshold_u", cfg.threshold_u, 0.5, 1.0, low_open=False)
    _require_int("mu", cfg.mu, 1)
    _require_int("crop_range", cfg.crop_range, 0)
    _require_int("dataaug_window", cfg.dataaug_window, 0)
    _require_number("lambda_u", cfg.lambda_u, 0.0, low_open=False)
    if not cfg.semi_supervised:
        return
    if cfg.crop_range >= cfg.segment:
        _fail("crop_range", cfg.crop_range, f"must be < segment ({cfg.segment}) so every crop keeps a step")
    if cfg.crop_range > 2 * cfg.dataaug_window:
        _fail(
            "crop_range",
            cfg.crop_range,
            f"must be <= 2 * dataaug_window ({2 * cfg.dataaug_window}): "
            "a crop longer than the segment needs that much context",
        )
    if cfg.segment + 2 * cfg.dataaug_window > max_steps:
        _fail(
            "dataaug_window",
            cfg.dataaug_window,
            f"segment + 2 * dataaug_window must be <= the episode length of {cfg.env} ({max_steps} steps)",
        )


def _check_rune(cfg: DictConfig) -> None:
    _require_number("rune_beta_init", cfg.rune_beta_init, 0.0, low_open=False)  # 0 turns the bonus off
    _require_number("rune_beta_decay", cfg.rune_beta_decay, 0.0, low_open=False)
    if cfg.rune_beta_decay >= 1.0:
        _fail("rune_beta_decay", cfg.rune_beta_decay, "must be a number in [0, 1)")
    if cfg.rune_beta_init > 0 and cfg.reward_source != "learned":
        _fail("rune_beta_init", cfg.rune_beta_init, "needs reward_source=learned (the bonus is the reward models' std)")
    if cfg.rune_beta_init > 0 and cfg.ensemble_size < 2:
        _fail(
            "rune_beta_init",
            cfg.rune_beta_init,
            f"needs ensemble_size >= 2 (got {cfg.ensemble_size}): the bonus is the std over the ensemble",
        )


def method_run_dir(*, _root_: DictConfig) -> str:
    """Run-directory component: '' for plain QPA (the original release's layout), else the method and every switch
    changed from the method preset, e.g. 'pebble/' or 'qpa_query_scheme-uniform/'."""
    method = _root_.method
    changed = [f"{key}-{_root_[key]}" for key in METHOD_SWITCHES if _root_[key] != method[key]]
    if _root_.feed_type is not None:
        changed.append(f"feed_type-{_root_.feed_type}")
    parts = [method.name, *changed] + ([str(_root_.run_tag)] if _root_.run_tag else [])
    return "" if parts == ["qpa"] else "_".join(parts) + "/"


def method_label(*, _root_: DictConfig) -> str:
    """The run's name in plots and tables: `method_run_dir` without the slash, 'qpa' for plain QPA."""
    return method_run_dir(_root_=_root_).rstrip("/") or "qpa"


# Registered here rather than in train_QPA.py so that whatever composes the config (scripts/sweep.py) resolves
# run directories exactly as training does.
OmegaConf.register_new_resolver("method_dir", method_run_dir, replace=True)
OmegaConf.register_new_resolver("method_label", method_label, replace=True)
