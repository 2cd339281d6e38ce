"""Resolve `domain_task` names (the dmc2gym / B-Pref convention) to dm_control suite tasks."""

from __future__ import annotations

import difflib
import functools
from typing import Any

from custom_dmcontrol.rendering import prefer_headless_backend


@functools.cache
def _name_to_pair() -> dict[str, tuple[str, str]]:
    # Importing the suite compiles no model, so this stays cheap enough for validating command lines.
    prefer_headless_backend()
    from dm_control import suite

    # Longest domain last, so that if two (domain, task) pairs ever joined to the same name the longest domain
    # prefix would win (`ball_in_cup` + `catch`, never `ball` + `in_cup_catch`).
    pairs = sorted(suite.ALL_TASKS, key=lambda pair: len(pair[0]))
    return {f"{domain}_{task}": (domain, task) for domain, task in pairs}


def task_names() -> list[str]:
    """Every suite task as a `domain_task` name, sorted."""
    return sorted(_name_to_pair())


def split_task_name(name: str) -> tuple[str, str]:
    """`'ball_in_cup_catch'` -> `('ball_in_cup', 'catch')`; ValueError with close suggestions for unknown names."""
    pair = _name_to_pair().get(name) if isinstance(name, str) else None
    if pair is None:
        suggestions = difflib.get_close_matches(str(name), task_names(), n=3)
        hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "e.g. walker_walk, ball_in_cup_catch"
        raise ValueError(f"unknown DeepMind Control task {name!r}; names are domain_task from dm_control.suite, {hint}")
    return pair


def load_task(name: str, seed: int, **kwargs: Any) -> Any:
    """`dm_control.suite.load` for a `domain_task` name, with the task's random state seeded by `seed`.

    Extra keyword arguments go to `suite.load` (`task_kwargs`, `environment_kwargs`, `visualize_reward`).
    """
    domain, task = split_task_name(name)  # also settles MUJOCO_GL before dm_control loads
    from dm_control import suite

    task_kwargs = {**(kwargs.pop("task_kwargs", None) or {}), "random": seed}
    return suite.load(domain, task, task_kwargs=task_kwargs, **kwargs)
