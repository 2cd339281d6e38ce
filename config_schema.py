"""The training config's schema: every key once, with its type, default, allowed values and one-line help.

The dataclasses below are registered in Hydra's ConfigStore as `train_schema`, the base of config/train_QPA.yaml,
so Hydra composes every run onto them and types each key. The key names are the original release's (its
run_QPA.sh command lines run unchanged); related keys are grouped into sections, and a builder reads its section
(`make_reward_trainer(RewardConfig.of(cfg), ...)`). Validation lives here too: building a section or the whole
`TrainConfig` checks every field against its rule and then the rules between fields, and a bad value is one
ConfigError line naming the key, the value and what is allowed, before any environment or network is built.

A method switch (a key whose change from its method preset names the run directory) is a field declared with
`switch=True`; config/method/*.yaml list only the values they change.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import II, DictConfig, OmegaConf, ValidationError, open_dict

import methods  # noqa: F401 (the built-in methods register their query schemes and feedback steps)
import utils
from feedback import FEEDBACK_STEPS
from preferences import QPA_CROP_SHRINK
from queries import QUERY_SCHEMES, feed_types, scheme_for_feed_type

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DMC_EPISODE_STEPS = 1000
METAWORLD_EPISODE_STEPS = 500
NAME_CHARACTERS = r"[^/\\#?%:\s]+"  # W&B refuses these characters in a project or entity name


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
    options: tuple[Any, ...] | Callable[[], tuple[Any, ...]]
    described: str = ""  # the allowed set in words, when the bare options do not say enough

    def __call__(self, value: Any) -> str | None:
        options = self.options() if callable(self.options) else self.options
        if not isinstance(value, bool) and value in options:
            return None
        return f"allowed: {self.described or ', '.join(str(option) for option in options)}"


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


class EnvName:
    text = "a DeepMind Control domain_task or metaworld_<task>-v3"

    def __call__(self, value: Any) -> str | None:
        try:
            utils.canonical_env_name(value)
        except ValueError as error:
            return str(error)
        return None


class SchemeName:
    """A scheme of the query-selection registry: the built-in ones or any registered since (docs/EXTENDING.md);
    the config reference lists only the built-in ones, whatever else a process has registered."""

    @property
    def text(self) -> str:
        builtin = [name for name, scheme in QUERY_SCHEMES.items() if scheme.select.__module__ == "queries"]
        return f"a registered scheme: {', '.join(builtin)}, or one of your own"

    def __call__(self, value: Any) -> str | None:
        return Choice(lambda: tuple(QUERY_SCHEMES))(value)


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
                if item.name == "env":  # canonical_env_name's message already names the value
                    raise ConfigError(problem)
                fail(self.path + item.name, getattr(self, item.name), problem)
        self.check_relations()

    def check_relations(self) -> None:
        """Rules that tie fields of this section together."""

    @classmethod
    def of(cls: type[Section_], cfg: Any) -> Section_:
        """This section's keys of a full config (a TrainConfig or a DictConfig)."""
        return cls(**{item.name: getattr(cfg, item.name) for item in fields(cls)})


# ---------------------------------------------------------------------- the agent (config/agent/*.yaml)


@dataclass
class SACParams(Section):
    """`agent.params`: SAC's hyper-parameters (ALGORITHM.md §6; PEBBLE / B-Pref defaults)."""

    path: ClassVar[str] = "agent.params."

    discount: float = key(0.99, Number(0.0, 1.0), "discount factor γ")
    init_temperature: float = key(0.1, Number(0.0), "initial entropy temperature α")
    alpha_lr: float = key(1e-4, Number(0.0), "temperature learning rate")
    alpha_betas: Any = key((0.9, 0.999), Pair(), "temperature Adam betas")
    actor_lr: float = key(1e-4, Number(0.0), "actor learning rate (the paper's walker/cheetah runs: 5e-4)")
    actor_betas: Any = key((0.9, 0.999), Pair(), "actor Adam betas")
    actor_update_frequency: int = key(1, Int(), "actor (and temperature) update every this many critic updates")
    critic_lr: float = key(1e-4, Number(0.0), "critic learning rate (the paper's walker/cheetah runs: 5e-4)")
    critic_betas: Any = key((0.9, 0.999), Pair(), "critic Adam betas")
    critic_tau: float = key(0.005, Number(0.0, 1.0), "Polyak rate of the target critic")
    critic_target_update_frequency: int = key(2, Int(), "target critic update every this many critic updates")
    batch_size: int = key(1024, Int(), "SAC minibatch size")
    learnable_temperature: bool = key(True, boolean, "learn α towards the target entropy -|A|")
    normalize_state_entropy: bool = key(True, boolean, "normalise PEBBLE's k-NN state entropy by its running std")


@dataclass
class ActorParams(Section):
    path: ClassVar[str] = "diag_gaussian_actor.params."
    hidden_dim: int = key(1024, Int(), "actor MLP width")
    hidden_depth: int = key(2, Int(), "actor MLP hidden layers")
    log_std_bounds: Any = key((-5, 2), Pair(betas=False), "[low, high] of the policy's log std")


@dataclass
class CriticParams(Section):
    path: ClassVar[str] = "double_q_critic.params."
    hidden_dim: int = key(1024, Int(), "critic MLP width")
    hidden_depth: int = key(2, Int(), "critic MLP hidden layers")


@dataclass
class AgentConfig:
    name: str = "sac"
    params: SACParams = field(default_factory=SACParams)


@dataclass
class ActorConfig:
    params: ActorParams = field(default_factory=ActorParams)


@dataclass
class CriticConfig:
    params: CriticParams = field(default_factory=CriticParams)


# ---------------------------------------------------------------------- the training keys, by section


@dataclass
class RunConfig(Section):
    """What runs, where, and how it is named."""

    method: str = key("qpa", None, "the method preset (method=qpa | pebble | surf | rune | sac_true); set by it")
    experiment: str = key("QPA", None, "the method's name in W&B run names; set by the method preset")
    env: str = key("walker_walk", EnvName(), "the task; Meta-World's -v2 names map to -v3")
    seed: int = key(1, Int(0), "seeds the environments, networks, queries and teacher")
    device: str = key(
        "auto",
        Name(r"auto|cpu|cuda(:\d+)?", "allowed: auto, cpu, cuda, cuda:<index>"),
        "an unavailable cuda falls back to cpu with a warning, unless strict_device",
    )
    strict_device: bool = key(False, boolean, "fail instead of falling back to cpu")
    num_threads: int | None = key(None, optional(Int()), "torch CPU threads; null: torch's default")
    cuda_graphs: Any = key(  # Any, not bool: `auto` is a value too
        "auto",
        auto_or_boolean,
        "replay each step's SAC update, action and r̂ from CUDA graphs (docs/PERFORMANCE.md); auto: on a CUDA device",
    )
    tf32: bool = key(
        False, boolean, "TF32 matrix multiplies on a CUDA GPU: faster, but changes the numerics; no effect on a CPU"
    )
    run_tag: str = key(
        "",
        Name(r"[\w.=+-]*", "must be letters, digits and ._=+- only (it names a directory)"),
        "appended to the run directory name, for sweeps over keys that are not method switches",
    )
    run_label: str = key(II("method_label:"), None, "the run's name in plots: the method and every switch changed")
    imports: list[str] = key(
        [],
        Names(described="a module to import (a dotted name on the Python path)"),
        "your modules, imported before the config is checked: query schemes, feedback steps, method presets",
    )

    def check_relations(self) -> None:
        try:
            device = utils.choose_device(self.device, strict=self.strict_device)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.cuda_graphs is True and device.type != "cuda":
            where = f"device={self.device} runs on the CPU"
            fail("cuda_graphs", True, f"needs a CUDA GPU, and {where}; allowed there: auto, false")


@dataclass
class ScheduleConfig(Section):
    """The loop's schedule, in environment steps (ALGORITHM.md §2)."""

    num_train_steps: int = key(1_000_000, Int(), "environment steps of the run")
    num_seed_steps: int = key(1000, Int(0), "uniform random actions at the start")
    num_unsup_steps: int = key(9000, Int(0), "PEBBLE state-entropy pre-training steps after the seed steps")
    replay_buffer_capacity: int = key(II("num_train_steps"), Int(), "transitions the replay buffer holds")
    gradient_update: int = key(1, Int(), "SAC updates per environment step")
    reset_update: int = key(100, Int(0), "SAC updates right after the critic reset at the first feedback")
    topK: int = key(5, Int(), "k of the k-NN state-entropy bonus")  # noqa: N815 (the original release's name)
    eval_frequency: int = key(10000, Int(), "evaluate at the first episode end this many steps after the last one")
    num_eval_episodes: int = key(10, Int(), "episodes per evaluation")
    preset_family: str = key(
        "",
        Choice(("", "dmc", "metaworld")),
        "set by a CPU-scale preset: the task family it was made for (quick: dmc, quick_metaworld: metaworld)",
    )


@dataclass
class QueryConfig(Section):
    """When queries are asked, how many, which (ALGORITHM.md §3), and what follows their labels (§2)."""

    # Any, not str: a bare `true` on the command line must be refused, not turned into the name 'True'
    reward_source: Any = key(
        "learned",
        Choice(("learned", "true"), "learned, 'true' (quoted: a bare true is a boolean; or use method=sac_true)"),
        "learned: preferences train r̂; true: SAC on the environment's reward, no queries",
        switch=True,
    )
    num_interact: int = key(20000, Int(), "environment steps between query batches")
    max_feedback: int = key(100, Int(), "total queries")
    reward_batch: int = key(10, Int(), "queries per batch")
    reward_schedule: int = key(
        0,
        Choice((0, 1, 2), "0 (fixed), 1 (shrinking), 2 (growing)"),
        "B-Pref's batch schedule: 0 fixed, 1 shrinking, 2 growing",
    )
    query_scheme: str = key("policy_aligned", SchemeName(), "the query-selection scheme (queries.py)", switch=True)
    feed_type: int | None = key(
        None,
        optional(
            Choice(
                lambda: tuple(feed_types()),
                ", ".join(f"{n} {name}" for n, name in sorted(feed_types().items())),
            )
        ),
        "B-Pref's number for query_scheme; wins over it when set",
    )
    max_reward_buffer_size: int = key(
        10, Int(), "N: policy-aligned queries and hybrid replay use the N newest episodes"
    )
    history_episodes: int | None = key(
        100,
        optional(Int()),
        "episodes the other schemes draw from (B-Pref's store); null: all",
    )
    explore: Any = key(
        False,
        optional(Number(0.0, 1.0), "false"),
        "false, or the share of each batch drawn from all N episodes (the rest from the 10 newest)",
    )
    large_batch: int = key(10, Int(), "candidates per query for disagreement / entropy sampling", switch=True)
    feedback_steps: list[str] = key(
        ["train_reward", "relabel", "reset_critic_after_first_round"],
        Names(lambda: tuple(FEEDBACK_STEPS), "a registered feedback step (feedback.py) or one of your own"),
        "what follows each round's labels, in order (feedback.py)",
        switch=True,
    )

    def check_relations(self) -> None:
        if self.reward_source == "learned" and self.reward_batch > self.max_feedback:
            fail("reward_batch", self.reward_batch, f"must be <= max_feedback ({self.max_feedback})")

    @property
    def scheme(self) -> str:
        """The query scheme: `feed_type` (B-Pref's numbering) wins over `query_scheme` when it is set."""
        return self.query_scheme if self.feed_type is None else scheme_for_feed_type(self.feed_type)

    @property
    def history_size(self) -> int | None:
        """Episodes the reward model keeps: N for schemes that draw only from the newest, else history_episodes."""
        return self.max_reward_buffer_size if QUERY_SCHEMES[self.scheme].recent_only else self.history_episodes


@dataclass
class RewardConfig(Section):
    """The reward model r̂ and its training (ALGORITHM.md §4), with SURF's semi-supervised term."""

    segment: int = key(50, Int(), "steps per queried segment")
    ensemble_size: int = key(1, Int(), "reward models in the ensemble", switch=True)
    activation: str = key("tanh", Choice(("tanh", "sig", "relu")), "output activation of r̂")
    reward_lr: float = key(3e-4, Number(0.0), "reward-model Adam learning rate")
    reward_update: int = key(2000, Int(), "DMC: ceil(reward_update * labels / 128) minibatch steps; Meta-World: epochs")
    reward_train_batch: int = key(128, Int(), "labelled pairs per reward-training minibatch")
    reward_hidden_dim: int = key(256, Int(), "reward MLP width")
    reward_hidden_depth: int = key(3, Int(0), "reward MLP hidden layers")
    label_margin: float = key(0.0, Number(0.0, 0.5, closed=True, high_open=True), "label smoothing: y -> y(1-2m)+m")
    data_aug_ratio: int = key(20, Int(0), "temporal-cropping copies per labelled pair; 0 = off", switch=True)
    # SURF (Park et al., ICLR 2022; values and sources in config/method/surf.yaml)
    semi_supervised: bool = key(
        False, boolean, "SURF: pseudo-labelled unlabelled pairs in every minibatch", switch=True
    )
    threshold_u: float = key(
        0.99, Number(0.5, 1.0, closed=True), "SURF τ: pseudo-label a pair when max P > τ", switch=True
    )
    mu: int = key(4, Int(), "SURF: unlabelled pairs per labelled pair in a minibatch", switch=True)
    lambda_u: float = key(1.0, Number(0.0, closed=True), "SURF: weight of the pseudo-label loss", switch=True)
    crop_range: int = key(5, Int(0), "SURF: unlabelled crops last U{segment ± crop_range} steps", switch=True)
    dataaug_window: int = key(5, Int(0), "SURF: context steps on each side of an unlabelled segment", switch=True)

    def check_relations(self) -> None:
        longest_cut = QPA_CROP_SHRINK[1]
        if self.data_aug_ratio > 0 and self.segment <= longest_cut:
            fail(
                "segment", self.segment, f"must be >= {longest_cut + 1} for temporal cropping (or set data_aug_ratio=0)"
            )
        if not self.semi_supervised:
            return
        if self.crop_range >= self.segment:
            fail("crop_range", self.crop_range, f"must be < segment ({self.segment}) so every crop keeps a step")
        if self.crop_range > 2 * self.dataaug_window:
            fail(
                "crop_range",
                self.crop_range,
                f"must be <= 2 * dataaug_window ({2 * self.dataaug_window}): "
                "a crop longer than the segment needs that much context",
            )


@dataclass
class TeacherConfig(Section):
    """Who labels: B-Pref's scripted teacher (Lee et al., NeurIPS 2021 Datasets and Benchmarks), a person in the
    browser (human_*), or a replay of a person's answers (labels_from); presets in config/teacher/."""

    teacher_beta: float = key(-1.0, Number(), "Bradley-Terry rationality; <= 0: a perfectly rational teacher")
    teacher_gamma: float = key(1.0, Number(0.0, 1.0), "myopia: step t of T weighs gamma^(T-1-t)")
    teacher_eps_mistake: float = key(0.0, Number(0.0, 1.0, closed=True), "probability of flipping a label")
    teacher_eps_skip: float = key(0.0, Number(0.0, 1.0, closed=True), "skip pairs whose return is below this share")
    teacher_eps_equal: float = key(0.0, Number(0.0, 1.0, closed=True), "equal label when returns differ by less")
    teacher_type: str = key(
        "scripted", Choice(("scripted", "human", "replay")), "who labels: B-Pref's script, a person, or a saved run"
    )
    labels_from: Any = key(None, optional(Name(r".+", "a path")), "teacher=replay: the labels.sqlite to replay")
    human_mode: str = key("sync", Choice(("sync", "async")), "human: wait for each round, or train on meanwhile")
    human_host: str = key("127.0.0.1", Name(r"[\w.:-]+", "a host name or address"), "human: the page's bind address")
    human_port: int = key(8765, Int(0, 65535), "human: the page's port; 0: any free port")
    human_timeout: float = key(300.0, Number(0.0), "human: seconds before an unanswered query goes back to the pool")
    human_undo_window: float = key(
        5.0,
        Number(0.0, closed=True),
        "human: seconds a fully answered round stays open, so that its last answer can still be undone; 0: none",
    )
    human_instruction: Any = key(  # Any, not str: a bare `true` must be refused, not turned into the text 'True'
        "",
        Text(300),
        "human: the page's instruction to labellers in place of the task's goal (task_goals.py); empty: the goal",
    )

    def check_relations(self) -> None:
        if self.teacher_type == "replay" and (self.labels_from is None or not Path(str(self.labels_from)).is_file()):
            fail("labels_from", self.labels_from, "teacher=replay needs the labels.sqlite of a finished run")


@dataclass
class ReplayConfig(Section):
    """QPA's hybrid experience replay and RUNE's exploration bonus (config/method/rune.yaml)."""

    hybrid_replay: bool = key(True, boolean, "QPA: part of each SAC batch from the N newest episodes", switch=True)
    her_ratio: float = key(0.5, Number(0.0, 1.0, closed=True), "share of each SAC batch from the N newest episodes")
    rune_beta_init: float = key(0.0, Number(0.0, closed=True), "RUNE β_0 of r̂_mean + β_t r̂_std; 0 = off", switch=True)
    rune_beta_decay: float = key(
        1e-5, Number(0.0, 1.0, closed=True, high_open=True), "RUNE: β_t = β_0 (1 - decay)^step", switch=True
    )


@dataclass
class SuccessorConfig(Section):
    """QPA's successors (ALGORITHM.md §11, §12): PoLiCER (Heo et al., ICLR 2026; defaults from its public code and
    scripts/synthetic.sh) and PPE (Zhu et al., NeurIPS 2025); their presets are config/method/policer.yaml, ppe.yaml."""

    policer_tau: float = key(1.0, Number(0.0), "PoLiCER: query segments drawn with P ∝ (1/rank)^tau", switch=True)
    policer_q_threshold: float = key(
        25.0, Number(), "PoLiCER: first threshold on the highest mean Q(s, π(s)) that triggers a reset", switch=True
    )
    policer_q_increase: float = key(
        5.0, Number(0.0, closed=True), "PoLiCER: threshold rise after a reset (DMC 5.0, Meta-World 7.5)", switch=True
    )
    policer_q_increase_decay: float = key(
        0.9, Number(0.0, 1.0, closed=True), "PoLiCER: the rise is multiplied by this after each reset", switch=True
    )
    policer_q_threshold_max: float = key(100.0, Number(), "PoLiCER: the threshold rises to at most this", switch=True)
    policer_max_replay_ratio: int = key(
        4, Int(), "PoLiCER: SAC updates per env step rise by 1 per reset up to this, until the last round", switch=True
    )
    ppe_extension: bool = key(
        True, boolean, "PPE: explore with the proximal-policy extension of the policy (with ppe_morse)", switch=True
    )
    ppe_mixture_query: bool = key(
        True, boolean, "PPE: query_scheme=ppe_mixture mixes OOD and in-distribution pairs; false: QPA's", switch=True
    )
    ppe_epsilon: float = key(0.01, Number(0.0), "PPE: KL(π_E ‖ π_T) bound of the exploration shift", switch=True)
    ppe_kappa: float = key(
        0.5, Number(0.0, 1.0, closed=True), "PPE: share of a round's queries chosen as out-of-distribution", switch=True
    )
    ppe_lambda: float = key(5.0, Number(0.0), "PPE: the Morse network's kernel M = exp(-λ/2 ‖f(s, a)‖²)", switch=True)
    ppe_morse_hidden_dim: int = key(256, Int(), "PPE: Morse network MLP width", switch=True)
    ppe_morse_hidden_depth: int = key(3, Int(), "PPE: Morse network MLP hidden layers", switch=True)
    ppe_morse_updates: int = key(200, Int(), "PPE: Morse network Adam steps after each query round", switch=True)
    ppe_morse_batch: int = key(256, Int(), "PPE: labelled state-actions per Morse network step", switch=True)
    ppe_morse_lr: float = key(1e-3, Number(0.0), "PPE: Morse network Adam learning rate", switch=True)


@dataclass
class LogConfig(Section):
    """Logging, checkpoints and resume."""

    log_save_tb: bool = key(False, boolean, "also write TensorBoard logs")
    wandb: bool = key(False, boolean, "also log to Weights & Biases")
    wandb_project: str = key(
        "QPA", Name(NAME_CHARACTERS, "must be a non-empty name without /\\#?%: or spaces"), "W&B project"
    )
    wandb_entity: Any = key(  # Any, not str: a bare `true` must be refused, not turned into the name 'True'
        None, optional(Name(NAME_CHARACTERS, "a W&B user or team name")), "W&B user or team; null: your default"
    )
    save_checkpoint: bool = key(True, boolean, "checkpoint atomically at every evaluation (enables resume)")
    resume: bool = key(True, boolean, "continue from the run directory's checkpoint when one exists")
    overwrite: bool = key(False, boolean, "delete the run directory's earlier logs and checkpoint and start over")
    save_model: bool = key(False, boolean, "also write agent and reward-model weights at the end")
    save_video: bool = key(False, boolean, "film the first episode of evaluations to video/eval_<step>.mp4")
    video_evals: str = key(
        "first_last",
        Name(r"all|first_last|last|every_[1-9]\d*", "allowed: all, first_last, last, every_<k> (k >= 1)"),
        "evaluations filmed: all; the first and the last; the last; every_<k>: the first, one per k * eval_frequency"
        " steps, and the last",
    )
    # MuJoCo's default offscreen buffer, which DMC and Meta-World models keep, is 640 x 480.
    video_height: int = key(192, Pixels(64, 480), "video frame height in pixels")
    video_width: int = key(256, Pixels(64, 640), "video frame width in pixels")
    video_fps: int = key(
        20, Int(), "video frame rate; a frame every round(control rate / video_fps) steps, so videos play in real time"
    )


PRESETS = {"dmc": "quick", "metaworld": "quick_metaworld"}  # each family's CPU-scale preset (config/preset/)
FAMILY_NAMES = {"dmc": "DeepMind Control", "metaworld": "Meta-World"}
SECTIONS = (RunConfig, ScheduleConfig, QueryConfig, RewardConfig, TeacherConfig, ReplayConfig, SuccessorConfig,
            LogConfig)  # fmt: skip


@dataclass
class TrainConfig(
    LogConfig, SuccessorConfig, ReplayConfig, TeacherConfig, RewardConfig, QueryConfig, ScheduleConfig, RunConfig
):
    """Every key of a training run: the sections above, flat as the original release's keys are, plus the agent."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    double_q_critic: CriticConfig = field(default_factory=CriticConfig)
    diag_gaussian_actor: ActorConfig = field(default_factory=ActorConfig)

    def check_relations(self) -> None:
        for section in SECTIONS:
            section.check_relations(self)  # type: ignore[arg-type]
        family = "metaworld" if utils.is_metaworld(self.env) else "dmc"
        if self.preset_family and self.preset_family != family:
            made_for, other = FAMILY_NAMES[self.preset_family], FAMILY_NAMES[family]
            fail("preset_family", self.preset_family, f"+preset={PRESETS[self.preset_family]} is made for {made_for} "
                 f"tasks and env={self.env} is {other}; use +preset={PRESETS[family]}")  # fmt: skip
        steps = episode_steps(self.env)
        if self.reward_source == "learned" and self.num_seed_steps + self.num_unsup_steps < steps:
            fail(
                "num_unsup_steps",
                self.num_unsup_steps,
                "num_seed_steps + num_unsup_steps must be >= the episode "
                f"length of {self.env} ({steps} steps): the first queries need one complete episode",
            )
        if self.segment >= steps:
            fail("segment", self.segment, f"must be < the episode length of {self.env} ({steps} steps)")
        if self.semi_supervised and self.segment + 2 * self.dataaug_window > steps:
            fail(
                "dataaug_window",
                self.dataaug_window,
                f"segment + 2 * dataaug_window must be <= the episode length of {self.env} ({steps} steps)",
            )
        if self.replay_buffer_capacity < self.agent.params.batch_size:
            fail(
                "replay_buffer_capacity",
                self.replay_buffer_capacity,
                f"must be >= agent.params.batch_size ({self.agent.params.batch_size})",
            )
        if self.rune_beta_init > 0 and self.reward_source != "learned":
            fail(
                "rune_beta_init",
                self.rune_beta_init,
                "needs reward_source=learned (the bonus is the reward models' std)",
            )
        if self.teacher_type != "scripted" and self.reward_source != "learned":
            fail("teacher_type", self.teacher_type, "allowed with reward_source=true: scripted (no queries are asked)")
        if self.rune_beta_init > 0 and self.ensemble_size < 2:
            fail(
                "rune_beta_init",
                self.rune_beta_init,
                f"needs ensemble_size >= 2 (got {self.ensemble_size}): the bonus is the std over the ensemble",
            )
        if self.scheme == "ppe_mixture" and "ppe_morse" not in self.feedback_steps:
            fail("query_scheme", self.scheme, "needs the ppe_morse feedback step, which trains the Morse network")


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
METHOD_SWITCHES = tuple(item.name for item in fields(TrainConfig) if item.metadata.get("switch"))


def episode_steps(env: str) -> int:
    return METAWORLD_EPISODE_STEPS if utils.is_metaworld(env) else DMC_EPISODE_STEPS


def nested_rule(path: str) -> Callable[[Any], str | None] | None:
    """The rule of a dotted key (`segment`, `agent.params.batch_size`), None if it has none."""
    schema: Any = TrainConfig
    *parents, name = path.split(".")
    for parent in parents:
        found = {item.name: item for item in fields(schema)}.get(parent)
        if found is None or not is_dataclass(found.default_factory):  # not a schema key (hydra.run.dir)
            return None
        schema = found.default_factory
    found = {item.name: item for item in fields(schema)}.get(name)
    return found.metadata.get("rule") if found else None


# ---------------------------------------------------------------------- checking a composed config


def import_modules(names: Iterable[str]) -> None:
    """Import the modules of the `imports` key, whose query schemes, feedback steps and method presets register
    themselves as they load. The current directory is searched too, as `python -m` does."""
    names = list(names)
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        problem = Names(described="a module to import (a dotted name on the Python path)")([name])
        if problem:
            fail("imports", names, problem)
        try:
            importlib.import_module(name)
        except Exception as error:  # a missing module, or an error while it runs
            reason = str(error).splitlines()[0] if str(error) else ""
            fail("imports", names, f"importing {name} failed ({type(error).__name__}: {reason})")


def requested_imports(overrides: list[str]) -> list[str]:
    """The modules an `imports=...` command-line override names, before any config is composed (a method preset of
    one of them must exist when Hydra looks it up)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

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


def check_config(cfg: DictConfig) -> TrainConfig:
    """The typed config of a composed one (Hydra's own node left out); ConfigError (one line) for the first value
    that cannot work. The `imports` modules are imported first, so their registered names are valid values."""
    import_modules(cfg.get("imports") or [])
    plain = copy.copy(cfg)
    with open_dict(plain):
        plain.pop("hydra", None)
    try:
        config = OmegaConf.to_object(plain)
    except ValidationError as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(_type_error_line(error)) from None
    assert isinstance(config, TrainConfig)
    return config


def _type_error_line(error: ValidationError) -> str:
    """A value of the wrong type, in the words of the key's rule."""
    path = str(error.full_key)
    rule = nested_rule(path)
    shown = getattr(error, "value", None)
    allowed = rule(shown) if rule and shown is not None else None
    return f"{path}={shown!r} is invalid: {allowed or str(error).splitlines()[0]}"


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
        raise ConfigError(_composition_error_line(error, overrides, config_name)) from None
    check_config(cfg)
    return cfg


def check_boolean_overrides(overrides: list[str]) -> None:
    """A boolean key takes true or false on the command line: OmegaConf would read yes, on, 1 or 2 as true."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() or override.is_delete():
            continue
        if nested_rule(override.key_or_group) is boolean:
            value = override.value()
            problem = boolean(value)
            if problem:
                fail(override.key_or_group, value, problem)


def _composition_error_line(error: HydraException, overrides: list[str], config_name: str) -> str:
    if isinstance(error.__cause__, ValidationError):
        # A value Hydra could not convert to the key's type; the error's own value, since a key given twice is
        # checked at each of its values.
        return _type_error_line(error.__cause__)
    unknown = re.match(r"Could not override '([^']+)'", str(error))
    if not unknown:
        return f"the command line could not be read: {str(error).splitlines()[0]}"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        known = _flat_keys(OmegaConf.to_container(compose(config_name, [])))
    name = unknown.group(1)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{name} is not a config key{hint} (a new key needs +{name}=...)"


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


def _flat_keys(config: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in config.items():
        keys += _flat_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return keys


# ---------------------------------------------------------------------- run directories and labels


@functools.cache
def method_preset(name: str) -> dict[str, Any]:
    """The switch values of config/method/<name>.yaml, after its parents (its defaults list) and the schema."""
    values = {item.name: default_of(item) for item in fields(TrainConfig) if item.metadata.get("switch")}
    path = CONFIG_DIR / "method" / f"{name}.yaml"
    stored = ConfigStore.instance().repo.get("method", {}).get(f"{name}.yaml")  # a preset of an `imports` module
    if path.exists():
        preset = OmegaConf.to_container(OmegaConf.load(path))
    elif stored is not None:
        preset = OmegaConf.to_container(stored.node)
    else:
        return values
    for parent in preset.pop("defaults", []):
        if parent != "_self_":
            values.update(method_preset(parent))
    values.update({name: value for name, value in preset.items() if name in values})
    return values


def method_run_dir(*, _root_: DictConfig) -> str:
    """Run-directory component: '' for plain QPA (the original release's layout), else the method and every switch
    changed from the method preset, e.g. 'pebble/' or 'qpa_query_scheme-uniform/'."""
    preset = method_preset(_root_.method)
    changed = [f"{name}-{_value_name(_root_[name])}" for name in METHOD_SWITCHES if _root_[name] != preset[name]]
    if _root_.feed_type is not None:
        changed.append(f"feed_type-{_root_.feed_type}")
    parts = [_root_.method, *changed] + ([str(_root_.run_tag)] if _root_.run_tag else [])
    return "" if parts == ["qpa"] else "_".join(parts) + "/"


def _value_name(value: Any) -> str:
    """A switch value as a directory name: lists (feedback_steps) as their items joined by '+'."""
    return "+".join(map(str, value)) if OmegaConf.is_list(value) or isinstance(value, list) else str(value)


def method_label(*, _root_: DictConfig) -> str:
    """The run's name in plots and tables: `method_run_dir` without the slash, 'qpa' for plain QPA."""
    return method_run_dir(_root_=_root_).rstrip("/") or "qpa"


# Registered here rather than in train_QPA.py so that whatever composes the config (scripts/sweep.py) resolves
# run directories exactly as training does.
OmegaConf.register_new_resolver("method_dir", method_run_dir, replace=True)
OmegaConf.register_new_resolver("method_label", method_label, replace=True)


def plain_defaults() -> dict[str, Any]:
    """Every key's default by its dotted name in a resolved config (`seed`, `agent.params.batch_size`), except the
    defaults that interpolate other keys (`${...}`), whose value depends on the run."""
    defaults = {
        f"{section.path}{item.name}": default_of(item)
        for section in (*SECTIONS, SACParams, ActorParams, CriticParams)
        for item in fields(section)
    }
    return {key: value for key, value in defaults.items() if not (isinstance(value, str) and "${" in value)}


def reference_table() -> str:
    """docs/CONFIG.md's reference: one Markdown row per key (`python config_schema.py` prints it)."""
    rows = ["| key | default | allowed | what it does |", "|---|---|---|---|"]
    for section in (*SECTIONS, SACParams, ActorParams, CriticParams):
        for item in fields(section):
            rule = item.metadata["rule"]
            allowed = getattr(rule, "text", None) or (rule(object()) or "") if rule else ""
            allowed = allowed.removeprefix("must be ").removeprefix("allowed: ")
            doc = item.metadata["doc"] + (" (method switch)" if item.metadata["switch"] else "")
            cells = (f"`{section.path}{item.name}`", f"`{default_of(item)}`", allowed, doc)
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_table())
