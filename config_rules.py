"""The language config keys are written in: `key(default, rule, help, switch=...)` fields of `Section` dataclasses,
and the rules that say which values a key allows, in words (`Int()`, `Number(0.0, 1.0)`, `Choice(...)`, ...).

A rule is a function of a value that returns None when the value is allowed and otherwise what is allowed, as text;
building a Section checks each field against its rule and then the rules between fields, and a bad value is one
ConfigError line naming the key, the value and what is allowed. The core's keys (config_schema.py) and every
method's own keys (methods/, or a module of yours) are written in it. It imports nothing of the project.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from omegaconf import OmegaConf


class ConfigError(ValueError):
    """A config value that cannot work; the message is a single line."""


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


# ---------------------------------------------------------------------- rules: a value's allowed set, as text


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class Int:
    minimum: int = 1
    maximum: int | None = None

    def __call__(self, value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum
        if self.maximum is None:
            return None if ok else f"must be an integer >= {self.minimum}"
        return None if ok and value <= self.maximum else f"must be an integer in [{self.minimum}, {self.maximum}]"


@dataclass(frozen=True)
class Number:
    """A real number in (low, high] (or [low, high] with closed=True); a None bound is open-ended."""

    low: float | None = None
    high: float | None = None
    closed: bool = False
    high_open: bool = False

    def __call__(self, value: Any) -> str | None:
        low, high = self.low, self.high
        ok = is_number(value) and (low is None or value > low or (self.closed and value == low))
        ok = ok and (high is None or value < high or (not self.high_open and value == high))
        if ok:
            return None
        left = f"{'[' if self.closed else '('}{low}" if low is not None else "(-inf"
        right = f"{high}{')' if self.high_open else ']'}" if high is not None else "inf)"
        if low is None and high is None:
            return "must be a number"
        if high is None:
            return f"must be a number {'>=' if self.closed else '>'} {low}"
        return f"must be a number in {left}, {right}"


@dataclass(frozen=True)
class Choice:
    """One of `options` (or of what a function returns, for a registry that grows as modules load)."""

    options: tuple[Any, ...] | Callable[[], tuple[Any, ...]]
    described: str | Callable[[], str] = ""  # the allowed set in words, when the bare options do not say enough

    def __call__(self, value: Any) -> str | None:
        options = self.options() if callable(self.options) else self.options
        if not isinstance(value, bool) and value in options:
            return None
        described = self.described() if callable(self.described) else self.described
        return f"allowed: {described or ', '.join(str(option) for option in options)}"


@dataclass(frozen=True)
class Name:
    pattern: str
    allowed: str

    def __call__(self, value: Any) -> str | None:
        ok = isinstance(value, str | int) and not isinstance(value, bool) and re.fullmatch(self.pattern, str(value))
        return None if ok else self.allowed


@dataclass(frozen=True)
class Pair:
    """Two numbers: Adam's betas in [0, 1), or [low, high] bounds with low < high."""

    betas: bool = True

    @property
    def text(self) -> str:
        return "two numbers in [0, 1)" if self.betas else "[low, high] with low < high"

    def __call__(self, value: Any) -> str | None:
        values = list(value) if isinstance(value, list | tuple) or OmegaConf.is_list(value) else []
        if len(values) != 2 or not all(is_number(item) for item in values):
            return "must be two numbers"
        if self.betas and not all(0 <= item < 1 for item in values):
            return "must be two numbers in [0, 1)"
        if not self.betas and not values[0] < values[1]:
            return "must be [low, high] with low < high"
        return None


@dataclass(frozen=True)
class Pixels:
    """An image side in pixels: a multiple of 16 (H.264's macroblock, so no encoder rescales) in [low, high]."""

    low: int
    high: int

    def __call__(self, value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
        return None if ok and value % 16 == 0 else f"must be a multiple of 16 from {self.low} to {self.high}"


@dataclass(frozen=True)
class Text:
    """One line of text, as a person reads it (a quoted value on the command line)."""

    maximum: int

    def __call__(self, value: Any) -> str | None:
        ok = isinstance(value, str) and len(value) <= self.maximum and not any(c in value for c in "\r\n")
        return None if ok else f"must be one line of text of at most {self.maximum} characters (quote it)"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def auto_or_boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) or value == "auto" else "allowed: auto, true, false"


def optional(rule: Callable[[Any], str | None], word: str = "null") -> Callable[[Any], str | None]:
    """`rule`, or None (false for `explore`)."""

    def check(value: Any) -> str | None:
        if value is None or (word == "false" and value is False):
            return None
        problem = rule(value)
        return problem and f"must be {word} or {problem.removeprefix('must be ').removeprefix('allowed: ')}"

    return check


def key(default: Any, rule: Callable[[Any], str | None] | None, doc: str, switch: bool = False) -> Any:
    """A config key: its default, its rule, its one-line help; `switch` marks a method switch."""
    metadata = {"rule": rule, "doc": doc, "switch": switch}
    if isinstance(default, list):  # a mutable default: each config gets its own copy
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(item: Any) -> Any:
    """A schema field's default value."""
    return item.default_factory() if item.default is MISSING else item.default


@dataclass(frozen=True)
class Names:
    """A list of names, each a registered one (`options`) or, with `module`, a dotted module path."""

    options: Callable[[], tuple[str, ...]] | None = None
    described: str = ""

    @property
    def text(self) -> str:
        return self.described

    def __call__(self, value: Any) -> str | None:
        names = list(value) if isinstance(value, list | tuple) or OmegaConf.is_list(value) else None
        if names is None or not all(isinstance(name, str) for name in names):
            return f"must be a list of names: {self.described}"
        allowed = self.options() if self.options else None
        for name in names:
            if allowed is not None and name not in allowed:
                return f"{name!r} is not {self.described}"
            if allowed is None and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                return f"{name!r} is not {self.described}"
        return None


Section_ = TypeVar("Section_", bound="Section")


class Section:
    """A group of keys. Building one checks each field's rule, then the rules between its fields."""

    path: ClassVar[str] = ""  # where the section sits in the config, for the error messages of nested ones

    def __post_init__(self) -> None:
        for item in fields(self):
            rule = item.metadata.get("rule")
            problem = rule(getattr(self, item.name)) if rule else None
            if problem:
                if getattr(rule, "names_the_value", False):  # its message is the whole line already
                    raise ConfigError(problem)
                fail(self.path + item.name, getattr(self, item.name), problem)
        self.check_relations()

    def check_relations(self) -> None:
        """Rules that tie fields of this section together."""

    @classmethod
    def of(cls: type[Section_], cfg: Any) -> Section_:
        """This section's keys of a full config (a TrainConfig or a DictConfig)."""
        return cls(**{item.name: getattr(cfg, item.name) for item in fields(cls)})
