"""What a method registers, by name: its query schemes, its feedback steps, its extensions of the loop and its
config keys (docs/EXTENDING.md). The config schema reads these tables and the training loop builds from them, so a
method in `methods/` or in a module of yours named by the `imports` key edits no core file. This module imports
nothing of the project: the schema, the loop and every method import it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class QueryScheme:
    select: Callable[[Any], Any]  # QueryContext -> SegmentPairs (queries.py)
    recent_only: bool  # draws only from the N most recent episodes, so the episode store keeps just those
    uses_reward_model: bool  # scores candidates with the ensemble: meaningless before its first training
    feed_type: int | None  # B-Pref's number for the scheme, for `feed_type=<n>`


@dataclass(frozen=True)
class Extension:
    """A part of a method that is on while `active(cfg)` says so (its switches), built with the run: `build(run)`.
    The loop calls the hooks the built object has (feedback.HOOKS)."""

    build: Callable[[Any], Any]
    active: Callable[[Any], bool]


QUERY_SCHEMES: dict[str, QueryScheme] = {}
FEEDBACK_STEPS: dict[str, Any] = {}  # name -> the step function, or the class to build with the run
EXTENSIONS: dict[str, Extension] = {}
KEY_SECTIONS: list[type] = []  # the dataclasses of the methods' own config keys, in registration order


def register_scheme(
    name: str, *, recent_only: bool = False, uses_reward_model: bool = False, feed_type: int | None = None
) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Add a query scheme (a function of a QueryContext returning SegmentPairs) under `name`."""

    def add(select: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if name in QUERY_SCHEMES:
            raise ValueError(f"query scheme {name!r} is already registered")
        if feed_type is not None and feed_type in feed_types():
            raise ValueError(f"feed_type {feed_type} is already {feed_types()[feed_type]!r}'s")
        QUERY_SCHEMES[name] = QueryScheme(select, recent_only, uses_reward_model, feed_type)
        return select

    return add


def register_step(name: str) -> Callable[[Any], Any]:
    """Add a feedback step (a function of the run and the round, or a class built with the run) under `name`."""

    def add(step: Any) -> Any:
        if name in FEEDBACK_STEPS:
            raise ValueError(f"feedback step {name!r} is already registered")
        FEEDBACK_STEPS[name] = step
        return step

    return add


def register_extension(name: str, active: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """Add an extension (a class built with the run) under `name`, on in every run whose config `active` accepts."""

    def add(build: Any) -> Any:
        if name in EXTENSIONS:
            raise ValueError(f"extension {name!r} is already registered")
        EXTENSIONS[name] = Extension(build, active)
        return build

    return add


def register_keys(section: type) -> type:
    """Add a method's config keys: a dataclass of config_rules.key(...) fields (a config_rules.Section). Its keys
    join the schema at the top level, beside the core's, and must not reuse a name."""
    if not is_dataclass(section):
        raise TypeError(f"{section.__name__} is not a dataclass; allowed: a @dataclass of config_rules.key fields")
    taken = {item.name for other in KEY_SECTIONS for item in fields(other)}
    reused = sorted(taken & {item.name for item in fields(section)})
    if reused:
        raise ValueError(f"{section.__name__} declares {reused[0]!r}, which another method's keys already declare")
    if section not in KEY_SECTIONS:
        KEY_SECTIONS.append(section)
    return section


def feed_types() -> dict[int, str]:
    """B-Pref's numbers of the registered schemes."""
    return {scheme.feed_type: name for name, scheme in QUERY_SCHEMES.items() if scheme.feed_type is not None}


def scheme_for_feed_type(feed_type: int) -> str:
    """The scheme B-Pref numbers `feed_type` (0 uniform, 1 disagreement, ...)."""
    return feed_types()[feed_type]


def active_extensions(cfg: Any) -> dict[str, Extension]:
    """The extensions the config turns on, in registration order."""
    return {name: extension for name, extension in EXTENSIONS.items() if extension.active(cfg)}
