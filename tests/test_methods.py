"""Method presets (qpa, pebble, surf, rune, sac_true), the switches they are made of, their sweeps and comparison.

Each switch is checked where it acts: hybrid replay and query selection through a real Workspace driving real
components (a ReplayBuffer subclass only records which sampler the agent calls), SURF's pseudo-labels on the
reward model itself, RUNE's bonus on the replay buffer and through the Workspace's schedule. A few tiny end-to-end
runs (walker_walk for every preset, Meta-World drawer-open for SURF and RUNE) then feed the comparison plot.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import (
    REPO_ROOT,
    SMALL_NETWORKS,
    PreferenceLearner,
    built_once,
    compose_config,
    load_config,
    make_reward_model,
)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import registry
import train_QPA
from config_rules import ConfigError, default_of
from config_schema import method_switches, schema
from methods.surf import PseudoLabelLoss, pseudo_labels
from plot import main as plot_main
from preferences import crop_windows, window_sums
from replay_buffer import ReplayBuffer
from run_naming import method_preset
from schedule import Phase

METHODS = ("qpa", "pebble", "surf", "rune", "sac_true")
# Small networks and budgets: the Workspace tests build every component but train for a handful of steps.
SMALL = [
    "env=walker_walk", "device=cpu", "segment=20", "reward_update=5", "max_feedback=20", "reward_batch=10",
    "num_train_steps=5000", "agent.params.batch_size=32", *SMALL_NETWORKS,
]  # fmt: skip
# The end-to-end budget: 900 random steps, 100 of state-entropy pre-training, queries at steps 1000 and 1250 (the
# first needs a finished walker episode), SAC on the learned reward to step 1500; evaluations at 0 and 1500.
TINY = [
    "num_train_steps=1500", "num_seed_steps=900", "num_unsup_steps=100", "num_interact=250", "max_feedback=20",
    "reward_batch=10", "segment=20", "reward_update=20", "eval_frequency=1500", "agent.params.batch_size=64",
    *SMALL_NETWORKS,
]  # fmt: skip
RUN_NAME = "maxFeedback20_numInteract250_seed{}"
RUN_100 = "maxFeedback100_numInteract20000_seed1"


def test_presets_list_only_switches_and_only_what_they_change() -> None:
    qpa = yaml.safe_load((REPO_ROOT / "config" / "method" / "qpa.yaml").read_text())
    assert qpa == {"method": "qpa", "experiment": "QPA"}  # QPA's switch values are the schema's defaults
    schema_defaults = {item.name: default_of(item) for item in dataclasses.fields(schema())}
    assert {name: schema_defaults[name] for name in method_switches()} == method_preset("qpa")
    for method in METHODS[1:]:
        preset = yaml.safe_load((REPO_ROOT / "config" / "method" / f"{method}.yaml").read_text())
        base = preset.pop("defaults")[0]
        assert preset.pop("method") == method and set(preset) <= {"experiment", *method_switches()}, method
        inherited = {**method_preset(base), "experiment": compose_config(f"method={base}").experiment}
        assert all(preset[key] != inherited[key] for key in preset), (method, base)
    pebble = compose_config("method=pebble")
    assert (pebble.query_scheme, pebble.ensemble_size, pebble.large_batch) == ("disagreement", 3, 10)
    assert (pebble.hybrid_replay, pebble.data_aug_ratio, pebble.semi_supervised, pebble.rune_beta_init) == (
        False, 0, False, 0.0)  # fmt: skip
    surf = compose_config("method=surf")
    assert (surf.semi_supervised, surf.threshold_u, surf.mu, surf.lambda_u) == (True, 0.99, 4, 1.0)
    assert (surf.crop_range, surf.dataaug_window, surf.ensemble_size, surf.query_scheme) == (5, 5, 3, "disagreement")
    rune = compose_config("method=rune")
    assert (rune.rune_beta_init, rune.rune_beta_decay, rune.ensemble_size) == (0.05, 1e-5, 3)
    assert compose_config("method=sac_true").reward_source == "true"


@pytest.mark.parametrize(
    ("feed_type", "scheme"),
    [(0, "uniform"), (1, "disagreement"), (2, "entropy"), (3, "kcenter"), (4, "kcenter_disagree"),
     (5, "kcenter_entropy")],
)  # fmt: skip
def test_feed_type_aliases_follow_bpref(feed_type: int, scheme: str) -> None:
    assert load_config(f"feed_type={feed_type}").scheme == scheme
    assert registry.QUERY_SCHEMES[scheme].feed_type == feed_type


def test_bad_switch_values_are_one_line_errors() -> None:
    cases = {
        ("feed_type=6",): "feed_type",
        ("method=surf", "threshold_u=0.3"): "threshold_u",
        ("method=surf", "crop_range=11"): "crop_range",  # longer than 2 x dataaug_window of context
        ("method=rune", "ensemble_size=1"): "rune_beta_init",  # the bonus needs an ensemble's std
        ("method=rune", "rune_beta_decay=1.5"): "rune_beta_decay",
        ("method=qpa", "mu=0"): "mu",
    }
    for overrides, key in cases.items():
        with pytest.raises(ConfigError) as error:
            load_config(*overrides)
        message = str(error.value)
        assert message.startswith(f"{key}=") and "\n" not in message, message


def test_every_method_and_ablation_gets_its_own_run_directory_and_label() -> None:
    labels = {
        (): "qpa",  # plain QPA keeps the reference layout exp/<env>/maxFeedback..., as run_QPA.sh's runs
        ("method=pebble",): "pebble",
        ("method=surf",): "surf",
        ("method=rune",): "rune",
        ("method=sac_true",): "sac_true",
        ("query_scheme=uniform",): "qpa_query_scheme-uniform",
        ("hybrid_replay=false",): "qpa_hybrid_replay-False",
        ("data_aug_ratio=0",): "qpa_data_aug_ratio-0",
        ("feed_type=1",): "qpa_feed_type-1",
        ("method=surf", "threshold_u=0.95"): "surf_threshold_u-0.95",
        ("method=pebble", "ensemble_size=5"): "pebble_ensemble_size-5",
        ("rune_beta_init=0.05", "ensemble_size=3"): "qpa_ensemble_size-3_rune_beta_init-0.05",
        ("max_reward_buffer_size=5", "run_tag=N5"): "qpa_N5",
    }
    run_dirs = set()
    for overrides, label in labels.items():
        cfg = compose_config(*overrides, hydra_config=True)
        assert cfg.run_label == label
        assert cfg.hydra.run.dir == f"./exp/walker_walk/{'' if label == 'qpa' else label + '/'}{RUN_100}"
        run_dirs.add(cfg.hydra.run.dir)
    assert len(run_dirs) == len(labels)


def sweep_configs(table: str, tasks: list[str] | None = None, methods: list[str] | None = None) -> dict:
    """{(task, method): config (seed 1)} of a sweep table's runs, composed as scripts/sweep.py composes them."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import sweep

    runs = sweep.plan_runs(sweep.load_table(table), tasks or [], methods or [], [1], [])
    with initialize_config_dir(config_dir=str(REPO_ROOT / "config"), version_base="1.3", job_name="train_QPA"):
        return {(run.task, run.method): compose("train_QPA", [*run.overrides, "seed=1"]) for run in runs}


def test_sweep_tables_keep_qpa_identical_and_change_one_thing_per_ablation() -> None:
    reference = {task: OmegaConf.to_container(cfg, resolve=True) for (task, _), cfg in sweep_configs("qpa").items()}
    table = yaml.safe_load((REPO_ROOT / "scripts" / "sweeps" / "baselines.yaml").read_text())
    assert set(table["tasks"]) == set(reference) and len(reference) == 9 and table["seeds"] == [1, 2, 3, 4, 5]
    assert table["methods"] == {method: f"method={method}" for method in METHODS}
    baselines = sweep_configs("baselines", methods=["qpa"])  # every task: QPA's runs are run_QPA.sh's
    baselines |= sweep_configs("baselines", ["walker_walk", "metaworld_drawer-open"], list(METHODS[1:]))
    for (task, method), cfg in baselines.items():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if method == "qpa":
            assert resolved == reference[task], task  # the same runs (and run directories) as run_QPA.sh
        else:
            differing = {key for key in resolved if resolved[key] != reference[task][key]}
            assert differing <= {*method_switches(), "method", "experiment", "run_label"}, (task, method, differing)
            assert resolved["run_label"] == method
    expected_change = {
        "no_policy_aligned": {"query_scheme": "uniform"}, "no_hybrid_replay": {"hybrid_replay": False},
        "no_crop": {"data_aug_ratio": 0}, "N5": {"max_reward_buffer_size": 5}, "N30": {"max_reward_buffer_size": 30},
        "N50": {"max_reward_buffer_size": 50}, "her0.25": {"her_ratio": 0.25}, "her0.75": {"her_ratio": 0.75},
    }  # fmt: skip
    labels = set()
    ablations = yaml.safe_load((REPO_ROOT / "scripts" / "sweeps" / "ablations.yaml").read_text())
    assert set(ablations["tasks"]) == {"walker_walk", "cheetah_run", "walker_run"}
    assert set(ablations["methods"]) == {"qpa", *expected_change}
    for (task, method), cfg in sweep_configs("ablations", ["walker_walk"]).items():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        changed = {key: resolved[key] for key in resolved if resolved[key] != reference[task][key]}
        changed.pop("run_label") if method != "qpa" else None
        changed.pop("run_tag", None)
        assert changed == expected_change.get(method, {}), (task, method)
        labels.add((task, resolved["run_label"]))
    assert len(labels) == len(expected_change) + 1


@pytest.mark.slow
def test_sweep_scripts_dry_run() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    for script, runs in (("run_baselines.sh", 5 * 5), ("run_ablations.sh", 9 * 5)):
        result = subprocess.run(["bash", str(REPO_ROOT / script), "walker_walk", "--dry-run"], capture_output=True,
                                text=True, env=env, cwd=REPO_ROOT, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        commands = result.stdout.splitlines()
        assert len(commands) == runs and all("task=walker_walk" in command for command in commands)


# ---------------------------------------------------------------------------------------------- Workspace wiring
class RecordingReplayBuffer(ReplayBuffer):
    """A real replay buffer that notes which sampler each SAC batch came from."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []

    def sample(self, batch_size: int):
        self.calls.append(("uniform",))
        return super().sample(batch_size)

    def sample_onpolicy(self, batch_size: int, num_episodes: int):
        self.calls.append(("recent", num_episodes))
        return super().sample_onpolicy(batch_size, num_episodes)

    def sample_hybrid(self, batch_size: int, num_episodes: int, recent_ratio: float):
        self.calls.append(("hybrid", num_episodes, recent_ratio))
        return super().sample_hybrid(batch_size, num_episodes, recent_ratio)


def make_workspace(tmp_path: Path, *overrides: str) -> train_QPA.Workspace:
    return train_QPA.Workspace(load_config(*SMALL, *overrides), tmp_path)


def fill(buffer: ReplayBuffer, rng: np.random.Generator, episodes: int = 3, length: int = 100) -> None:
    obs_dim, act_dim = buffer.obs_shape[0], buffer.action_shape[0]
    for _ in range(episodes):
        for t in range(length):
            done = t == length - 1
            buffer.add(rng.normal(size=obs_dim), rng.uniform(-1, 1, act_dim), float(rng.normal()),
                       rng.normal(size=obs_dim), done, False)  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["num_seed_steps=1000", "num_unsup_steps=9000"],
         {0: "seed", 1000: "seed", 1001: "unsupervised", 9999: "unsupervised", 10000: "first_feedback",
          10001: "feedback"}),
        (["num_seed_steps=1000", "num_unsup_steps=0"], {999: "seed", 1000: "first_feedback", 1001: "feedback"}),
        (["method=sac_true", "num_seed_steps=1000"], {999: "seed", 1000: "true_reward", 20000: "true_reward"}),
    ],
)  # fmt: skip
def test_phases_of_the_loop(tmp_path, overrides, expected) -> None:
    workspace = make_workspace(tmp_path, *overrides)
    for step, phase in expected.items():
        assert workspace.schedule.phase(step) == phase, step


@pytest.mark.parametrize("hybrid_replay", [True, False])
def test_hybrid_replay_switch_decides_whether_batches_use_the_recent_window(tmp_path, hybrid_replay) -> None:
    workspace = make_workspace(tmp_path, f"hybrid_replay={str(hybrid_replay).lower()}", "max_reward_buffer_size=4",
                               "her_ratio=0.25")  # fmt: skip
    buffer = RecordingReplayBuffer((24,), (6,), 5000, "cpu", max_episode_len=1000)
    fill(buffer, np.random.default_rng(0))
    workspace.replay_buffer = buffer
    workspace.step, workspace.schedule.total_feedback = 2000, 10  # feedback budget (20) not yet spent
    workspace.update_agent(Phase.FEEDBACK)
    workspace.schedule.total_feedback = 20  # spent: plain uniform replay for everyone
    workspace.update_agent(Phase.FEEDBACK)
    if hybrid_replay:
        assert buffer.calls == [("hybrid", 4, 0.25), ("uniform",)]
    else:
        assert buffer.calls == [("uniform",), ("uniform",)]


@pytest.mark.parametrize(("scheme", "older_queries"), [("uniform", True), ("policy_aligned", False)])
def test_query_scheme_switch_decides_whether_queries_reach_past_the_last_n_episodes(
    tmp_path, scheme, older_queries
) -> None:
    n = 3
    workspace = make_workspace(tmp_path, f"query_scheme={scheme}", f"max_reward_buffer_size={n}")
    rng = np.random.default_rng(1)
    num_episodes = 3 * n
    for episode in range(num_episodes):  # observation[0] tags the episode
        for t in range(40):
            obs = np.concatenate([[episode], rng.normal(size=23)])
            workspace.episodes.add(obs, rng.uniform(-1, 1, 6), float(rng.normal()), t == 39)
    workspace.schedule.rounds = 1  # a later round: no critic restart (the replay buffer is empty here)
    workspace.feedback()
    pairs, _ = workspace.preferences.data()
    episodes = pairs[..., 0].unique()  # every step of a segment carries its episode's tag
    assert len(pairs) == 10
    assert bool((episodes < num_episodes - n).any()) == older_queries
    assert bool((episodes >= num_episodes - n).any())


@pytest.mark.parametrize(("scheme", "stored"), [("policy_aligned", 3), ("disagreement", 5), ("uniform", 5)])
def test_episode_store_keeps_n_episodes_for_qpa_and_history_episodes_for_the_rest(tmp_path, scheme, stored) -> None:
    workspace = make_workspace(tmp_path, f"query_scheme={scheme}", "max_reward_buffer_size=3", "history_episodes=5")
    rng = np.random.default_rng(5)
    for episode in range(8):
        for t in range(30):
            workspace.episodes.add(np.full(24, episode), rng.uniform(-1, 1, 6), 0.0, t == 29)
    assert [int(episode.sa[0, 0]) for episode in workspace.episodes] == list(range(8 - stored, 8))
    everything = make_workspace(tmp_path / "all", f"query_scheme={scheme}", "history_episodes=null")
    assert everything.episodes.maxlen == (10 if scheme == "policy_aligned" else None)


def test_every_consumer_draws_from_its_own_random_stream(tmp_path) -> None:
    workspace = make_workspace(tmp_path)
    generators = {
        "seed-phase actions": workspace.rngs.actions,
        "replay indices": workspace.replay_buffer.rng,
        "query selection": workspace.rngs.queries,
        "teacher": workspace.teacher.rng,
        "alignment diagnostic": workspace.rngs.diagnostic,
    }
    first_draws = {name: tuple(generator.integers(0, 2**32, size=4)) for name, generator in generators.items()}
    assert len(set(first_draws.values())) == len(generators), first_draws
    again = make_workspace(tmp_path / "again")  # and each stream is a function of the seed alone
    assert tuple(again.rngs.actions.integers(0, 2**32, size=4)) == first_draws["seed-phase actions"]


def squashed_gaussian_log_prob(workspace: train_QPA.Workspace, rows: torch.Tensor) -> torch.Tensor:
    """log π(a|s) from torch.distributions (an implementation independent of agent/actor.py)."""
    obs, action = rows[:, :24], rows[:, 24:].clamp(-1 + 1e-6, 1 - 1e-6)
    with torch.no_grad():
        dist = workspace.agent.actor(obs)
        base = torch.distributions.Normal(dist.mu, dist.std)
        squashed = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
        return squashed.log_prob(action).sum(-1)


@pytest.mark.parametrize("scheme", ["policy_aligned", "uniform", "disagreement", "entropy", "kcenter",
                                    "kcenter_disagree", "kcenter_entropy"])  # fmt: skip
def test_query_log_likelihood_is_logged_for_every_scheme_and_shows_alignment(tmp_path, scheme) -> None:
    """Nine old episodes of uniform random actions, then three of the current policy's own actions: the last N = 3
    are what policy-aligned selection draws from, so its queries are far likelier under π than the history."""
    n = 3
    workspace = make_workspace(tmp_path, f"query_scheme={scheme}", f"max_reward_buffer_size={n}", "large_batch=4")
    rng = np.random.default_rng(4)
    for episode in range(3 * n):
        for t in range(60):
            obs = rng.normal(size=24).astype(np.float32)
            if episode < 2 * n:
                action = rng.uniform(-1, 1, 6).astype(np.float32)
            else:
                action = workspace.agent.act(obs, sample=True)
            done = t == 59
            workspace.episodes.add(obs, action, float(rng.normal()), done)
            workspace.replay_buffer.add(obs, action, 0.0, obs, float(done), 0.0)
    workspace.step = 1234
    workspace.schedule.rounds = 1  # a later round: every scheme selects as itself (no first-round fallback)
    workspace.feedback()
    workspace.logger.dump(workspace.step)
    row = pd.read_csv(tmp_path / "train.csv").iloc[-1]
    queries = workspace.preferences.data()[0].reshape(-1, 30)  # the oracle answers, so every query is stored
    assert len(workspace.preferences) == 10
    expected = float(squashed_gaussian_log_prob(workspace, queries).mean())
    assert row["step"] == 1234
    assert row["query_log_likelihood"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert math.isfinite(row["history_log_likelihood"])
    # A uniform action in [-1, 1]^6 is hundreds of nats less likely than one of the policy's own (std ~0.2).
    assert row["history_log_likelihood"] < -100.0, row
    if scheme == "policy_aligned":
        assert row["query_log_likelihood"] > -20.0, row
    else:  # the other schemes draw candidates from the whole history: 20 segments, two thirds of them random
        assert row["query_log_likelihood"] < -20.0, row


def test_rune_workspace_stores_the_ensemble_std_and_decays_beta(tmp_path) -> None:
    workspace = make_workspace(tmp_path, "method=rune")
    buffer = workspace.replay_buffer
    assert buffer.reward_std is not None and workspace.reward_model.ensemble_size == 3
    obs, action = np.random.default_rng(2).normal(size=24), np.zeros(6)
    mean, std = workspace.reward_model.predict_step(obs, action, with_std=True)
    expected_mean, expected_std = workspace.reward_model.predict_reward_and_std(
        torch.as_tensor(np.concatenate([obs, action])[None], dtype=torch.float32)
    )
    assert torch.equal(mean, expected_mean) and torch.equal(std, expected_std) and float(std) > 0
    fill(buffer, np.random.default_rng(3))
    buffer.reward_std[: len(buffer)] = 2.0
    bonus = workspace.extensions["rune_bonus"]
    betas, added = [], []
    for step in (0, 100_000, 300_000):
        workspace.step = step
        state = buffer.rng.bit_generator.state
        plain_batch = buffer.sample(workspace.agent.batch_size)
        buffer.rng.bit_generator.state = state
        batch = workspace.sample(hybrid=False)  # the same rows, as SAC trains on them at this step
        added.append(float(((batch.reward - plain_batch.reward) / 2.0).mean()))
        betas.append(bonus.weight(step))
        workspace.update_agent(Phase.FEEDBACK)
    assert betas == pytest.approx([0.05 * (1 - 1e-5) ** step for step in (0, 100_000, 300_000)], rel=1e-12)
    assert added == pytest.approx(betas, rel=1e-5)
    assert betas[1] == pytest.approx(0.05 * math.exp(-1), rel=1e-4) and betas[0] > betas[1] > betas[2]

    plain = make_workspace(tmp_path / "qpa")
    assert plain.replay_buffer.reward_std is None and not plain.batch_transforms


def test_surf_and_sac_true_workspaces(tmp_path) -> None:
    surf = make_workspace(tmp_path / "surf", "method=surf", "threshold_u=0.95")
    (term,) = surf.reward_trainer.loss_terms
    assert isinstance(term, PseudoLabelLoss)
    assert (term.threshold, term.num_pairs, term.weight) == (0.95, 4 * surf.cfg.reward_train_batch, 1.0)
    assert make_workspace(tmp_path / "qpa").reward_trainer.loss_terms == []
    assert make_workspace(tmp_path / "sac", "method=sac_true").schedule.learns_reward is False


def test_num_threads_sets_torch_cpu_threads(tmp_path) -> None:
    before = torch.get_num_threads()
    try:
        make_workspace(tmp_path, "num_threads=2")
        assert torch.get_num_threads() == 2
        make_workspace(tmp_path / "default")  # null leaves torch's setting alone
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- SURF
def test_pseudo_labels_only_above_the_threshold() -> None:
    gaps = torch.tensor([-6.0, -2.0, -0.1, 0.0, 0.3, 2.0, 4.0, 8.0])
    returns = torch.stack([torch.zeros_like(gaps), gaps], -1)  # P[σ1 ≻ σ0] = sigmoid(gap)
    for threshold in (0.5, 0.9, 0.99, 1.0):
        labels, mask = pseudo_labels(returns, threshold)
        confidence = torch.maximum(torch.sigmoid(gaps), 1 - torch.sigmoid(gaps))
        assert torch.equal(mask, confidence > threshold)
        assert torch.equal(labels[gaps != 0], (gaps[gaps != 0] > 0).long())
    assert pseudo_labels(returns, 1.0)[1].sum() == 0


def surf_model(**kwargs) -> PreferenceLearner:
    model = make_reward_model(4, 2, ensemble_size=2, reward_batch=16, segment=20, max_feedback=64, data_aug_ratio=1,
                        reward_hidden_dim=32, reward_train_batch=16, seed=3, **kwargs)  # fmt: skip
    rng = np.random.default_rng(4)
    for episode in range(5):
        for t in range(60):  # row = (episode tag, step, noise...): where every unlabelled window comes from
            model.add_data(np.array([episode, t, *rng.normal(size=2)]), rng.normal(size=2), float(rng.normal()),
                           t == 59)  # fmt: skip
    model.query("uniform")
    return model


def test_unlabelled_windows_are_contiguous_and_inside_one_episode() -> None:
    (term,) = surf_model(semi_supervised=True, dataaug_window=5).trainer.loss_terms
    windows = term.sample_unlabelled(2, 300)
    assert windows.shape == (2, 300, 2, 30, 6)
    tags, steps = windows[..., 0], windows[..., 1]
    assert torch.equal(tags, tags[..., :1].expand_as(tags))
    assert torch.equal(steps - steps[..., :1], torch.arange(30.0).expand_as(steps))
    assert steps.min() == 0 and steps.max() == 59 and set(tags.unique().tolist()) == set(range(5))


def test_surf_crop_lengths_and_starts() -> None:
    generator = torch.Generator().manual_seed(0)
    starts, lengths = crop_windows((4000,), 30, (15, 25), 1, generator, torch.device("cpu"))
    assert set(lengths.unique().tolist()) == set(range(15, 26))
    assert starts.min() == 0 and bool((starts + lengths <= 30).all()) and (starts + lengths).max() == 30


def test_semi_supervised_term_is_the_cross_entropy_of_confident_pairs_on_the_crop() -> None:
    learner = surf_model(semi_supervised=True, threshold_u=0.6, mu=3, lambda_u=1.0)
    (term,), net = learner.trainer.loss_terms, learner.model.net
    members, num, centre, segment = 2, 3 * 16, 5, 20
    state = term.generator.get_state()
    with torch.no_grad():
        pairs = term.sample_unlabelled(members, num)
        rewards = net(pairs.reshape(members, -1, 6)).view(members, num, 2, 30)
        labels, confident = pseudo_labels(rewards[..., centre : centre + segment].sum(-1), 0.6)
        starts, lengths = crop_windows((members, num), 30, (segment - 5, segment + 5), 1, term.generator, term.device)
        cropped = window_sums(rewards, starts, lengths).squeeze(-1)
        expected = (F.cross_entropy(cropped.flatten(0, 1), labels.flatten(), reduction="none").view(members, num)
                    * confident).mean(1)  # fmt: skip
    term.generator.set_state(state)
    term.start()
    with torch.no_grad():
        loss = term.member_losses(net, members)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert 0 < confident.sum() < confident.numel()  # some pairs below τ are left out
    assert term.counts.tolist() == [float(confident.sum()), float(confident.numel())]


def test_threshold_one_leaves_training_exactly_supervised() -> None:
    supervised, never_confident, always = (surf_model(), surf_model(semi_supervised=True, threshold_u=1.0),
                                          surf_model(semi_supervised=True, threshold_u=0.5))  # fmt: skip
    for model in (supervised, never_confident, always):
        model.trainer.train_reward_iter(5)
    for a, b in zip(supervised.model.net.parameters(), never_confident.model.net.parameters()):
        assert torch.equal(a, b)
    fraction = {name: model.trainer.metrics().get("pseudo_label_fraction") for name, model in
                (("never", never_confident), ("always", always))}  # fmt: skip
    assert fraction["never"] == 0.0 and fraction["always"] > 0.99
    assert any(not torch.equal(a, b) for a, b in zip(supervised.model.net.parameters(), always.model.net.parameters()))


# ---------------------------------------------------------------------------------------------- RUNE
def row_index(sampled_obs: torch.Tensor, stored_obs: torch.Tensor) -> torch.Tensor:
    """Where each sampled observation sits in the buffer (observations are distinct random vectors)."""
    return (sampled_obs[:, None, :] == stored_obs[None]).all(-1).float().argmax(1)


def test_rune_bonus_is_beta_times_the_ensemble_std(tmp_path) -> None:
    model = make_reward_model(24, 6, ensemble_size=3, reward_hidden_dim=32, seed=5).model
    buffer = ReplayBuffer((24,), (6,), 1000, "cpu", store_reward_std=True, seed=6)
    plain = ReplayBuffer((24,), (6,), 1000, "cpu", seed=6)
    for target in (buffer, plain):
        fill(target, np.random.default_rng(8), episodes=2, length=150)
        target.relabel_with_predictor(model)
    inputs = torch.cat([buffer.obs[:300], buffer.action[:300]], -1)
    members = torch.stack([model.r_hat_member(inputs, member) for member in range(3)])
    mean, std = members.mean(0), members.std(0, correction=0)
    assert torch.allclose(buffer.reward[:300], mean) and torch.allclose(buffer.reward_std[:300], std)
    assert float(std.min()) > 0
    for beta in (0.05, 0.05 * (1 - 1e-5) ** 200_000):
        rune = make_workspace(tmp_path / str(beta), "method=rune", f"rune_beta_init={beta}", "rune_beta_decay=0")
        bonus = rune.extensions["rune_bonus"]
        for batch in (buffer.sample(64), buffer.sample_hybrid(64, 1, 0.5), buffer.sample_onpolicy(64, 1)):
            batch = bonus.transform_batch(batch, step=123)
            index = row_index(batch.obs, buffer.obs[:300])
            assert torch.allclose(batch.reward, mean[index] + beta * std[index], atol=1e-6)
        batch = plain.sample(64)  # no std column: plain r̂, as every method without RUNE trains on
        assert torch.allclose(batch.reward, mean[row_index(batch.obs, plain.obs[:300])], atol=1e-6)

    step_buffer = ReplayBuffer((24,), (6,), 10, "cpu", store_reward_std=True)
    step_buffer.add(np.ones(24), np.zeros(6), mean[:1], np.ones(24), False, False, std[:1])
    step_buffer.add(np.ones(24), np.zeros(6), 1.0, np.ones(24), False, False)  # true reward, no std: no bonus
    assert step_buffer.reward_std[:2, 0].tolist() == [float(std[0]), 0.0]
    restored = ReplayBuffer((24,), (6,), 10, "cpu", store_reward_std=True)
    restored.load_state_dict(step_buffer.state_dict())
    assert torch.equal(restored.reward_std[:2], step_buffer.reward_std[:2])
    with pytest.raises(ValueError, match="reward_std"):
        ReplayBuffer((24,), (6,), 10, "cpu").load_state_dict(step_buffer.state_dict())


# ---------------------------------------------------------------------------------------------- end to end
def launch(root: Path, *overrides: str) -> subprocess.Popen:
    """One Hydra multirun of tiny runs under `root` (the runs of one process share its imports)."""
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "train_QPA.py", "--multirun", *TINY, *overrides, f"hydra.sweep.dir={root}"]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every preset on walker_walk (QPA and PEBBLE with two seeds, for the comparison), SURF and RUNE on
    Meta-World drawer-open, in two processes side by side."""
    return built_once(tmp_path_factory, "methods", train_every_preset)


def train_every_preset(root: Path) -> Path:
    processes = [
        launch(root, "method=qpa,pebble", "seed=1,2"),
        launch(root, "env=walker_walk,metaworld_drawer-open-v3", "method=surf,rune,sac_true", "seed=1",
               "hydra.sweep.subdir=${env}/${method_dir:}" + RUN_NAME.format("${seed}")),
    ]  # fmt: skip
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    return root


def run_dir(root: Path, env: str, method: str, seed: int = 1) -> Path:
    return root / env / ("" if method == "qpa" else method) / RUN_NAME.format(seed)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_preset_runs_end_to_end_on_walker(tiny_runs, method) -> None:
    directory = run_dir(tiny_runs, "walker_walk", method)
    assert yaml.safe_load((directory / "status.json").read_text()) == {"state": "finished", "step": 1500, "error": None}
    config = OmegaConf.load(directory / "config.yaml")
    assert config.run_label == method and config.method == method
    evals, train = pd.read_csv(directory / "eval.csv"), pd.read_csv(directory / "train.csv")
    assert evals["step"].tolist() == [0, 1500] and evals["episode_reward"].notna().all()
    if method == "sac_true":  # no queries and no reward-model metrics
        assert (evals["total_feedback"] == 0).all()
        logged = set(evals.columns) | set(train.columns)
        assert not {"episode_reward_hat", "reward_loss", "reward_train_acc"} & logged
    else:
        assert evals["total_feedback"].iloc[-1] == 20 and train["reward_loss"].notna().any()
    assert ("pseudo_label_fraction" in train.columns) == (method == "surf")
    if method == "surf":
        fractions = train["pseudo_label_fraction"].dropna()  # both trainings end in one episode: one row
        assert len(fractions) >= 1 and fractions.between(0, 1).all()


@pytest.mark.slow
def test_rune_run_stores_mean_and_std_of_its_final_reward_model(tiny_runs) -> None:
    state = torch.load(run_dir(tiny_runs, "walker_walk", "rune") / "checkpoint.pt", weights_only=False)
    model = make_reward_model(24, 6, ensemble_size=3, reward_hidden_dim=32, segment=20, data_aug_ratio=0).model
    model.load_state_dict(state["reward_model"])
    stored = state["replay_buffer"]
    # The last queries came at step 1250, so every stored r̂ (relabelled then, or predicted per step after) is
    # the final model's: mean and std of its ensemble.
    mean, std = model.predict_reward_and_std(torch.cat([stored["obs"], stored["action"]], -1))
    assert len(stored["reward"]) == 1500
    assert torch.allclose(stored["reward"], mean, atol=1e-5) and torch.allclose(stored["reward_std"], std, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["surf", "rune"])
def test_surf_and_rune_run_on_metaworld(tiny_runs, method) -> None:
    directory = run_dir(tiny_runs, "metaworld_drawer-open-v3", method)
    assert yaml.safe_load((directory / "status.json").read_text())["state"] == "finished"
    evals = pd.read_csv(directory / "eval.csv")
    assert evals["success_rate"].notna().all() and evals["total_feedback"].iloc[-1] == 20


@pytest.mark.slow
def test_compare_plot_and_table_from_tiny_runs(tiny_runs, tmp_path) -> None:
    out_dir = tmp_path / "compare"
    assert plot_main(["compare", str(tiny_runs / "walker_walk"), "--out-dir", str(out_dir), "--reps", "200"]) == 0
    assert (out_dir / "walker_walk.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out_dir / "final_performance.csv").set_index("method")
    assert set(table.index) == set(METHODS)
    assert table.loc["qpa", "seeds"] == 2 and table.loc["pebble", "seeds"] == 2 and table.loc["rune", "seeds"] == 1
    qpa_finals = [pd.read_csv(run_dir(tiny_runs, "walker_walk", "qpa", seed) / "eval.csv")["episode_reward"].iloc[-1]
                  for seed in (1, 2)]  # fmt: skip
    assert table.loc["qpa", "mean"] == pytest.approx(np.mean(qpa_finals))
    iqm = pd.read_csv(out_dir / "iqm.csv").set_index("method")
    assert set(iqm.index) == set(METHODS)
    assert (iqm["ci_low"] <= iqm["iqm"] + 1e-12).all() and (iqm["iqm"] <= iqm["ci_high"] + 1e-12).all()
    assert "| walker_walk | pebble | episode_reward | 2 |" in (out_dir / "final_performance.md").read_text()


def test_compare_quick_refuses_a_comparison_without_qpa(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "bench/compare_quick.py", "--task", "cheetah_run", "--methods", "pebble", "sac_true",
         "--root", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--methods pebble sac_true is invalid: every comparison is against qpa" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before any run started


@pytest.mark.slow
def test_compare_quick_reports_returns_iqm_difference_and_alignment(tiny_runs, tmp_path) -> None:
    out_dir = tmp_path / "compare_quick"
    result = subprocess.run(
        [sys.executable, "bench/compare_quick.py", "--report-only", "--seeds", "2", "--root",
         str(tiny_runs / "walker_walk"), "--out-dir", str(out_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert {"qpa", "pebble", "sac_true", "QPA"} <= set(lines)
    assert "IQM" in lines["qpa"] and "log π of queries" in lines["qpa"] and "log π" not in lines["sac_true"]
    assert "95% bootstrap CI" in lines["QPA"]
    assert (out_dir / "walker_walk.png").is_file() and (out_dir / "alignment" / "walker_walk.png").is_file()
    assert (out_dir / "alignment.png").read_bytes()[:4] == b"\x89PNG"
    alignment = pd.read_csv(out_dir / "alignment" / "final_performance.csv").set_index("method")
    assert set(alignment.index) == {"qpa", "pebble"}  # SAC on the true reward asks no queries
    for method in ("qpa", "pebble"):
        for seed in (1, 2):
            train = pd.read_csv(run_dir(tiny_runs, "walker_walk", method, seed) / "train.csv")
            assert train["query_log_likelihood"].notna().sum() >= 1  # queries at 1000 and 1250: one episode row


@pytest.mark.slow
def test_compare_quick_leaves_out_a_run_still_training(tiny_runs, tmp_path, capsys) -> None:
    from bench.compare_quick import comparison_runs

    root = shutil.copytree(tiny_runs / "walker_walk", tmp_path / "walker_walk")
    training = run_dir(tmp_path, "walker_walk", "pebble", 2)
    evals = (training / "eval.csv").read_text().splitlines(keepends=True)
    (training / "eval.csv").write_text("".join(evals[:-1]))  # its last evaluation (step 1500) not yet written
    runs = comparison_runs(root, "walker_walk", [])
    assert {(run.method, run.seed) for run in runs if run.method in ("qpa", "pebble")} == {
        ("qpa", 1),
        ("qpa", 2),
        ("pebble", 1),
    }
    assert f"left out, not trained to the end: {training}" in capsys.readouterr().out


def test_compare_quick_reports_each_successor_against_qpa_and_each_ppe_ablation_against_ppe(tmp_path) -> None:
    """The shipped comparison, reported from its reference CSVs alone: every difference line is the difference of
    the mean last evaluation, computed here from the same rows."""
    reference = REPO_ROOT / "figure" / "reference"
    names = ("compare_quick.csv", "compare_quick_successors.csv", "compare_quick_ppe_ablation.csv")
    table = pd.concat([pd.read_csv(reference / name) for name in names])
    table.to_csv(tmp_path / "all.csv", index=False)
    methods = ["qpa", "policer", "ppe", "ppe_extension_only", "ppe_mixture_only"]
    result = subprocess.run(
        [sys.executable, "bench/compare_quick.py", "--report-only", "--root", str(tmp_path / "none"),
         "--out-dir", str(tmp_path / "out"), "--reuse", str(tmp_path / "all.csv"), "--reuse-methods", *methods],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    walker = table[(table.task == "walker_walk") & table.method.isin(methods)]
    finals = walker.sort_values("step").groupby(["method", "seed"]).episode_reward.last().groupby("method").mean()
    pairs = [(method, "QPA", "qpa") for method in ("policer", "ppe", "ppe_extension_only", "ppe_mixture_only")]
    pairs += [(method, "ppe", "ppe") for method in ("ppe_extension_only", "ppe_mixture_only")]
    for method, name, baseline in pairs:
        (line,) = [line for line in result.stdout.splitlines() if line.strip().startswith(f"{method} - {name} ")]
        assert float(line.split()[3]) == pytest.approx(finals[method] - finals[baseline], abs=0.05), line
        assert "95% bootstrap CI" in line
