"""Validate a resolved training config before any environment or network is built.

Every rejection is one line naming the key, the bad value and what is allowed, so a typo on a
command line costs seconds, not a crashed run hours later.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

import utils

QUERY_SCHEMES = (
    "policy_aligned",
    "uniform",
    "disagreement",
    "entropy",
    "kcenter",
    "kcenter_disagree",
    "kcenter_entropy",
)
# B-Pref's feed_type numbering.
FEED_TYPE_SCHEMES = ("uniform", "disagreement", "entropy", "kcenter", "kcenter_disagree", "kcenter_entropy")
ACTIVATIONS = ("tanh", "sig", "relu")
REWARD_SOURCES = ("learned", "true")
# Top-level keys that switch a method's behaviour; each one changed from the method preset names the run directory.
METHOD_SWITCHES = (
    "reward_source", "query_scheme", "hybrid_replay", "data_aug_ratio", "ensemble_size", "large_batch",
    "semi_supervised", "threshold_u", "mu", "lambda_u", "crop_range", "dataaug_window",
    "rune_beta_init", "rune_beta_decay",
)  # fmt: skip
CROP_SHRINK = 15  # temporal cropping draws lengths in U{S-15 ... S-5}
DMC_EPISODE_STEPS = 1000
METAWORLD_EPISODE_STEPS = 500


class ConfigError(ValueError):
    """A config value that cannot work; the message is a single line."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _require_int(cfg: DictConfig, key: str, minimum: int) -> None:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < minimum:
        _fail(key, value, f"must be an integer >= {minimum}")


def _require_range(cfg: DictConfig, key: str, low: float, high: float, low_open: bool = False) -> None:
    value = cfg[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        _fail(key, value, f"must be a number in {bracket}{low}, {high}]")


def episode_steps(env_name: str) -> int:
    return METAWORLD_EPISODE_STEPS if utils.is_metaworld(env_name) else DMC_EPISODE_STEPS


def resolve_query_scheme(cfg: DictConfig) -> str:
    """`feed_type` (B-Pref numbering) wins over `query_scheme` when it is set."""
    if cfg.feed_type is None:
        return cfg.query_scheme
    return FEED_TYPE_SCHEMES[int(cfg.feed_type)]


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line) for the first value that cannot work."""
    try:
        utils.canonical_env_name(cfg.env)
    except ValueError as error:
        raise ConfigError(str(error)) from None

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
    ):
        _require_int(cfg, key, 1)
    for key in (
        "num_seed_steps",
        "num_unsup_steps",
        "reset_update",
        "num_eval_episodes",
        "data_aug_ratio",
        "reward_hidden_depth",
        "seed",
    ):
        _require_int(cfg, key, 0)
    if cfg.reward_source == "learned":
        _require_int(cfg, "max_feedback", 1)
        _require_int(cfg, "reward_batch", 1)
        if cfg.reward_batch > cfg.max_feedback:
            _fail("reward_batch", cfg.reward_batch, f"must be <= max_feedback ({cfg.max_feedback})")

    for key in ("batch_size", "actor_update_frequency", "critic_target_update_frequency"):
        value = cfg.agent.params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(f"agent.params.{key}", value, "must be an integer >= 1")
    for key in ("actor_lr", "critic_lr", "alpha_lr", "init_temperature"):
        value = cfg.agent.params[key]
        if not isinstance(value, int | float) or not value > 0:
            _fail(f"agent.params.{key}", value, "must be a number > 0")
    if not cfg.reward_lr > 0:
        _fail("reward_lr", cfg.reward_lr, "must be a number > 0")

    max_steps = episode_steps(cfg.env)
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
    if cfg.data_aug_ratio > 0 and cfg.segment <= CROP_SHRINK:
        _fail("segment", cfg.segment, f"must be >= {CROP_SHRINK + 1} for temporal cropping (or set data_aug_ratio=0)")

    _require_range(cfg, "her_ratio", 0.0, 1.0)
    _require_range(cfg, "teacher_gamma", 0.0, 1.0, low_open=True)
    for key in ("teacher_eps_mistake", "teacher_eps_skip", "teacher_eps_equal", "label_margin"):
        _require_range(cfg, key, 0.0, 1.0)
    if cfg.explore is not False:
        _require_range(cfg, "explore", 0.0, 1.0, low_open=True)

    if cfg.activation not in ACTIVATIONS:
        _fail("activation", cfg.activation, f"allowed: {', '.join(ACTIVATIONS)}")
    if cfg.query_scheme not in QUERY_SCHEMES:
        _fail("query_scheme", cfg.query_scheme, f"allowed: {', '.join(QUERY_SCHEMES)}")
    if cfg.feed_type is not None and cfg.feed_type not in range(len(FEED_TYPE_SCHEMES)):
        _fail(
            "feed_type",
            cfg.feed_type,
            "allowed: null or 0..5 (B-Pref: 0 uniform, 1 disagreement, 2 entropy, "
            "3 kcenter, 4 kcenter_disagree, 5 kcenter_entropy)",
        )
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
        _require_int(cfg, "num_threads", 1)
    if cfg.history_episodes is not None:
        _require_int(cfg, "history_episodes", 1)
    _check_surf(cfg, max_steps)
    _check_rune(cfg)
    try:
        utils.choose_device(cfg.device, strict=cfg.strict_device)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_surf(cfg: DictConfig, max_steps: int) -> None:
    if not isinstance(cfg.semi_supervised, bool):
        _fail("semi_supervised", cfg.semi_supervised, "must be true or false")
    _require_range(cfg, "threshold_u", 0.5, 1.0)  # max(P) of two outcomes is never below 0.5
    _require_int(cfg, "mu", 1)
    _require_int(cfg, "crop_range", 0)
    _require_int(cfg, "dataaug_window", 0)
    if isinstance(cfg.lambda_u, bool) or not isinstance(cfg.lambda_u, int | float) or cfg.lambda_u < 0:
        _fail("lambda_u", cfg.lambda_u, "must be a number >= 0")
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
    for key in ("rune_beta_init", "rune_beta_decay"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int | float):
            _fail(key, cfg[key], "must be a number")
    if cfg.rune_beta_init < 0:
        _fail("rune_beta_init", cfg.rune_beta_init, "must be >= 0 (0 turns the RUNE bonus off)")
    if not 0.0 <= cfg.rune_beta_decay < 1.0:
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
    """Run-directory component: '' for plain QPA (the reference layout), else the method and every switch
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
