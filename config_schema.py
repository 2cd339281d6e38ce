"""The training config's keys: every core key once, with its type, default, allowed values and one-line help, in the
rule language of config_rules.py; a method's own keys are declared beside its code and join them here.

The core's sections below and the methods' sections (registry.KEY_SECTIONS, filled as `methods/` and the `imports`
modules load) make up `TrainConfig`, registered in Hydra's ConfigStore as `train_schema`, the base of
config/train_QPA.yaml, so Hydra composes every run onto it and types each key (`store_schema`, once the methods have
loaded). Building a section or the whole config checks every field against its rule and then the rules between
fields; a builder reads its section (`make_reward_trainer(RewardConfig.of(cfg), ...)`).

A method switch (a key whose change from its method preset names the run directory) is a field declared with
`switch=True`; config/method/*.yaml list only the values they change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import II, DictConfig, OmegaConf, ValidationError, open_dict

import registry
import utils
from config_rules import (
    Choice,
    ConfigError,
    Int,
    Name,
    Names,
    Number,
    Pair,
    Pixels,
    Section,
    Text,
    auto_or_boolean,
    boolean,
    default_of,
    fail,
    key,
    optional,
)
from preferences import QPA_CROP_SHRINK

NAME_CHARACTERS = r"[^/\\#?%:\s]+"  # W&B refuses these characters in a project or entity name


class EnvName:
    text = "a DeepMind Control domain_task, metaworld_<task>-v3 or a Gymnasium id (Box actions, flat observations)"
    names_the_value = True  # canonical_env_name's message is the whole line

    def __call__(self, value: Any) -> str | None:
        try:
            utils.canonical_env_name(value)
        except ValueError as error:
            return str(error)
        return None


def builtin_feed_types() -> str:
    """B-Pref's numbers of the built-in schemes, as the config reference lists them."""
    builtin = {number: name for number, name in registry.feed_types().items()
               if registry.QUERY_SCHEMES[name].select.__module__ == "queries"}  # fmt: skip
    return ", ".join(f"{number} {name}" for number, name in sorted(builtin.items()))


class SchemeName:
    """A scheme of the query-selection registry: the built-in ones or any registered since (docs/EXTENDING.md);
    the config reference lists only the built-in ones, whatever else a process has registered."""

    @property
    def text(self) -> str:
        builtin = [name for name, scheme in registry.QUERY_SCHEMES.items() if scheme.select.__module__ == "queries"]
        return f"a registered scheme: {', '.join(builtin)}, or one of your own"

    def __call__(self, value: Any) -> str | None:
        return Choice(lambda: tuple(registry.QUERY_SCHEMES))(value)


# ---------------------------------------------------------------------- the agent (config/agent/*.yaml)


@dataclass
class SACParams(Section):
    """`agent.params`: SAC's hyper-parameters (ALGORITHM.md §6; B-Pref's defaults)."""

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
    normalize_state_entropy: bool = key(
        True, boolean, "normalise the unsupervised phase's k-NN state entropy by its running std"
    )


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

    method: str = key("qpa", None, "the method preset (config/method/ or one a module of yours stores); set by it")
    experiment: str = key("QPA", None, "the method's name in W&B run names; set by the method preset")
    env: str = key("walker_walk", EnvName(), "the task; Meta-World's -v2 names map to -v3; HalfCheetah-v5: Gymnasium")
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
        "replay each step's SAC update, action and r̂ from CUDA graphs on a GPU (docs/PERFORMANCE.md); auto: off until "
        "that path is shown to write the eager path's logs on a GPU; true: on, unverified",
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
    num_unsup_steps: int = key(9000, Int(0), "unsupervised state-entropy pre-training steps after the seed steps")
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
        optional(Choice(lambda: tuple(registry.feed_types()), builtin_feed_types)),
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
        Names(lambda: tuple(registry.FEEDBACK_STEPS), "a registered feedback step (feedback.py) or one of your own"),
        "what follows each round's labels, in order (feedback.py)",
        switch=True,
    )

    def check_relations(self) -> None:
        if self.reward_source == "learned" and self.reward_batch > self.max_feedback:
            fail("reward_batch", self.reward_batch, f"must be <= max_feedback ({self.max_feedback})")

    @property
    def scheme(self) -> str:
        """The query scheme: `feed_type` (B-Pref's numbering) wins over `query_scheme` when it is set."""
        return self.query_scheme if self.feed_type is None else registry.scheme_for_feed_type(self.feed_type)

    @property
    def history_size(self) -> int | None:
        """Episodes the reward model keeps: N for schemes that draw only from the newest, else history_episodes."""
        return self.max_reward_buffer_size if registry.QUERY_SCHEMES[self.scheme].recent_only else self.history_episodes


@dataclass
class RewardConfig(Section):
    """The reward model r̂ and its training (ALGORITHM.md §4)."""

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
    metaworld_crop: bool = key(
        False, boolean, "Meta-World: train r̂ on the temporal crops too, not on whole segments", switch=True
    )

    def check_relations(self) -> None:
        longest_cut = QPA_CROP_SHRINK[1]
        if self.data_aug_ratio > 0 and self.segment <= longest_cut:
            fail(
                "segment", self.segment, f"must be >= {longest_cut + 1} for temporal cropping (or set data_aug_ratio=0)"
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
    """QPA's hybrid experience replay."""

    hybrid_replay: bool = key(True, boolean, "QPA: part of each SAC batch from the N newest episodes", switch=True)
    her_ratio: float = key(0.5, Number(0.0, 1.0, closed=True), "share of each SAC batch from the N newest episodes")


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
FAMILY_NAMES = {"dmc": "DeepMind Control", "metaworld": "Meta-World", "gymnasium": "a Gymnasium task"}
CORE_SECTIONS = (RunConfig, ScheduleConfig, QueryConfig, RewardConfig, TeacherConfig, ReplayConfig, LogConfig)
AGENT_SECTIONS = (SACParams, ActorParams, CriticParams)


@dataclass
class TrainConfig(LogConfig, ReplayConfig, TeacherConfig, RewardConfig, QueryConfig, ScheduleConfig, RunConfig):
    """Every key of a training run: the core's sections, flat as the original release's keys are, plus the agent.
    A run's config is an instance of `schema()`, which adds the methods' own sections to this."""

    agent: AgentConfig = field(default_factory=AgentConfig)
    double_q_critic: CriticConfig = field(default_factory=CriticConfig)
    diag_gaussian_actor: ActorConfig = field(default_factory=ActorConfig)

    def check_relations(self) -> None:
        for section in (*CORE_SECTIONS, *registry.KEY_SECTIONS):
            section.check_relations(self)  # type: ignore[arg-type]
        family = utils.env_family(self.env)
        if self.preset_family and self.preset_family != family:
            made_for, other = FAMILY_NAMES[self.preset_family], FAMILY_NAMES[family]
            instead = f"use +preset={PRESETS[family]}" if family in PRESETS else "no CPU-scale preset exists for it"
            fail("preset_family", self.preset_family, f"+preset={PRESETS[self.preset_family]} is made for {made_for} "
                 f"tasks and env={self.env} is {other}; {instead}")  # fmt: skip
        steps = utils.episode_steps(self.env)
        if self.reward_source == "learned" and self.num_seed_steps + self.num_unsup_steps < steps:
            fail(
                "num_unsup_steps",
                self.num_unsup_steps,
                "num_seed_steps + num_unsup_steps must be >= the episode "
                f"length of {self.env} ({steps} steps): the first queries need one complete episode",
            )
        if self.segment >= steps:
            fail("segment", self.segment, f"must be < the episode length of {self.env} ({steps} steps)")
        if self.replay_buffer_capacity < self.agent.params.batch_size:
            fail(
                "replay_buffer_capacity",
                self.replay_buffer_capacity,
                f"must be >= agent.params.batch_size ({self.agent.params.batch_size})",
            )
        if self.teacher_type != "scripted" and self.reward_source != "learned":
            fail("teacher_type", self.teacher_type, "allowed with reward_source=true: scripted (no queries are asked)")


_SCHEMAS: dict[tuple[type, ...], type[TrainConfig]] = {}


def schema() -> type[TrainConfig]:
    """TrainConfig with the keys of every method registered so far (registry.KEY_SECTIONS)."""
    methods = tuple(registry.KEY_SECTIONS)
    if not methods:
        return TrainConfig
    if methods not in _SCHEMAS:
        # A later base's fields come first: the core's keys lead, then each method's in registration order. Each
        # section's check_relations would shadow the next one's, so the whole config's (which calls them all) wins.
        bases = (*reversed(methods), TrainConfig)
        namespace = {"check_relations": TrainConfig.check_relations}
        _SCHEMAS[methods] = make_dataclass("TrainConfig", [], bases=bases, namespace=namespace)
    return _SCHEMAS[methods]


def store_schema() -> None:
    """Register `schema()` as Hydra's `train_schema`: call it once the methods' modules have loaded, before Hydra
    composes a config (train_QPA.py and command_line.compose_checked do)."""
    ConfigStore.instance().store(name="train_schema", node=schema())


def sections() -> Iterator[type[Section]]:
    """Every section of keys: the core's, the methods', the agent's."""
    yield from (*CORE_SECTIONS, *registry.KEY_SECTIONS, *AGENT_SECTIONS)


def method_switches() -> tuple[str, ...]:
    """The keys whose change from a method's preset names the run directory (declared with switch=True)."""
    return tuple(item.name for item in fields(schema()) if item.metadata.get("switch"))


def nested_rule(path: str) -> Callable[[Any], str | None] | None:
    """The rule of a dotted key (`segment`, `agent.params.batch_size`), None if it has none."""
    node: Any = schema()
    *parents, name = path.split(".")
    for parent in parents:
        found = {item.name: item for item in fields(node)}.get(parent)
        if found is None or not is_dataclass(found.default_factory):  # not a schema key (hydra.run.dir)
            return None
        node = found.default_factory
    found = {item.name: item for item in fields(node)}.get(name)
    return found.metadata.get("rule") if found else None


def check_config(cfg: DictConfig) -> TrainConfig:
    """The typed config of a composed one (Hydra's own node left out); ConfigError (one line) for the first value
    that cannot work."""
    plain = copy.copy(cfg)
    with open_dict(plain):
        plain.pop("hydra", None)
    try:
        config = OmegaConf.to_object(plain)
    except ValidationError as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(type_error_line(error)) from None
    assert isinstance(config, TrainConfig)
    return config


def type_error_line(error: ValidationError) -> str:
    """A value of the wrong type, in the words of the key's rule."""
    path = str(error.full_key)
    rule = nested_rule(path)
    shown = getattr(error, "value", None)
    allowed = rule(shown) if rule and shown is not None else None
    return f"{path}={shown!r} is invalid: {allowed or str(error).splitlines()[0]}"


def plain_defaults() -> dict[str, Any]:
    """Every key's default by its dotted name in a resolved config (`seed`, `agent.params.batch_size`), except the
    defaults that interpolate other keys (`${...}`), whose value depends on the run."""
    defaults = {f"{section.path}{item.name}": default_of(item) for section in sections() for item in fields(section)}
    return {key: value for key, value in defaults.items() if not (isinstance(value, str) and "${" in value)}
