"""QPA's successors, PoLiCER and PPE (methods/policer.py, methods/ppe.py): each selector against a small independent
computation on a seeded store, PPE's exploration shift against its KL bound and its Morse network, PoLiCER's reset
and replay ratio on a real Workspace, tiny runs of both from the command line with a person (over the page's API)
and with the replay of that person's answers, and exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, TIME_COLUMNS, load_config, train
from scipy.stats import rankdata
from test_methods import fill, make_workspace
from test_run_dir import status_step
from test_train import TINY

import queries
from agent.sac import SacUpdate
from bench.bench_sac import make_agent
from episodes import EpisodeStore
from feedback import train_reward
from methods.policer import NO_Q_SEEN, CriticTriggeredReset, policy_likelihood, rank_probabilities
from methods.ppe import MorseNetwork, exploration_shift, ppe_mixture
from preferences import crop_windows, qpa_crop_lengths
from teacher import QueryRound

OBS, ACT, SEGMENT = 24, 6, 10


def seeded_store(episodes: int = 6, length: int = 60, seed: int = 0) -> EpisodeStore:
    """Episodes whose actions come from the policy in some steps and uniformly in others, so that segments differ
    in how likely the policy finds them."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore(OBS, ACT, max_episodes=None)
    for _ in range(episodes):
        for t in range(length):
            store.add(rng.normal(size=OBS), rng.uniform(-1, 1, ACT) * rng.uniform(0, 1), 0.0, t == length - 1)
    return store


class Config:
    """The keys a successor's scheme reads, as the training config carries them."""

    policer_tau = 1.0
    ppe_mixture_query = True
    ppe_kappa = 0.5


def log_likelihood(actor: torch.nn.Module, rows: torch.Tensor, bound: float = 1 - 1e-4) -> torch.Tensor:
    """log π(a|s) of rows [N, obs + action] from torch.distributions (independent of agent/actor.py), actions
    clamped to ±`bound` (PoLiCER's code: 1 − 1e-4)."""
    obs, action = rows[:, :OBS], rows[:, OBS:].clamp(-bound, bound)
    with torch.no_grad():
        dist = actor(obs)
        squashed = torch.distributions.TransformedDistribution(torch.distributions.Normal(dist.mu, dist.std),
                                                               [torch.distributions.TanhTransform()])  # fmt: skip
        return squashed.log_prob(action).sum(-1)


def context(store: EpisodeStore, num: int, policy=None, steps=None, seed: int = 3, **keys) -> queries.QueryContext:
    cfg = Config()
    for name, value in keys.items():
        setattr(cfg, name, value)
    return queries.QueryContext(num, store, SEGMENT, 4, 5, 0.0, np.random.default_rng(seed), None,
                                torch.empty(0, 2, SEGMENT, OBS + ACT), policy, cfg, steps or {})  # fmt: skip


# ---------------------------------------------------------------------------------------------- PoLiCER
def test_rank_probabilities_are_one_over_rank_to_the_tau() -> None:
    scores = np.array([0.3, -2.0, 5.0, 1.1, -0.4])
    for tau in (1.0, 0.7, 2.0):
        ranks = rankdata(-scores, method="ordinal")  # 1 for the highest score
        expected = (1.0 / ranks) ** tau
        np.testing.assert_allclose(rank_probabilities(scores, tau), expected / expected.sum(), rtol=1e-12)
    assert rank_probabilities(scores, 0.0) == pytest.approx(np.full(5, 0.2))


def redo_policy_likelihood(
    store: EpisodeStore, agent, num: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scheme's draw, redone here: the same candidates, scored by log π from torch.distributions, ranked, drawn
    without replacement with P ∝ 1/rank and shuffled. Returns (candidate segments, their ranks, the picks)."""
    rng = np.random.default_rng(seed)
    candidates = store.sample_segment_pairs(2 * num * 5, list(store), SEGMENT, rng)
    segments = candidates.pairs.reshape(-1, SEGMENT, OBS + ACT)
    scores = log_likelihood(agent.actor, torch.as_tensor(segments.reshape(-1, OBS + ACT)))
    # A segment drawn twice ties with itself; ties get distinct ranks in drawing order, as a stable sort gives.
    ranks = rankdata(-scores.reshape(len(segments), SEGMENT).mean(1).numpy(), method="ordinal")
    picked = rng.choice(len(segments), size=2 * num, replace=False, p=(1 / ranks) / (1 / ranks).sum())
    rng.shuffle(picked)
    return segments, ranks, picked


def test_policy_likelihood_sampling_draws_by_rank_of_the_policy_likelihood() -> None:
    torch.manual_seed(0)
    agent = make_agent(OBS, ACT, 32, 2, 32, "cpu")
    store = seeded_store()
    num, top_half = 4, []
    for seed in range(30):
        ctx = context(store, num, agent, seed=seed)
        chosen = policy_likelihood(ctx)
        segments, ranks, picked = redo_policy_likelihood(store, agent, num, seed)
        # The robust diagnostic: where the picks sit in the ranking, 0% the likeliest, 100% the least likely.
        assert ctx.metrics["query_rank_percentile"] == pytest.approx(
            100 * np.mean((ranks[picked] - 1) / (len(ranks) - 1))
        )
        np.testing.assert_array_equal(chosen.pairs[:, 0], segments[picked[:num]])  # σ0: the first half drawn
        np.testing.assert_array_equal(chosen.pairs[:, 1], segments[picked[num:]])
        top_half += (ranks[picked] <= len(ranks) / 2).tolist()
    # The likelier half of the candidates is drawn far more often than the other (uniform draws: half of them).
    assert np.mean(top_half) > 0.65, np.mean(top_half)
    origins = store.sample_segment_pairs(2 * num * 5, list(store), SEGMENT, np.random.default_rng(29)).origins
    np.testing.assert_array_equal(chosen.origins[:, 1], origins.reshape(-1, 2)[picked[num:]])  # what a person sees


def policer_workspace(tmp_path: Path, *overrides: str):
    workspace = make_workspace(tmp_path, "method=policer", "max_feedback=40", "num_interact=1000", "num_unsup_steps=0",
                               *overrides)  # fmt: skip
    fill(workspace.replay_buffer, np.random.default_rng(0))
    for episode in range(3):  # labelled pairs to retrain on
        for t in range(40):
            workspace.episodes.add(np.random.default_rng(t + 40 * episode).normal(size=24), np.zeros(6), float(t),
                                   t == 39)  # fmt: skip
    workspace.preferences.add(*map(np.asarray, (np.random.default_rng(1).normal(size=(10, 2, 20, 30)),
                                                np.tile([0.0, 1.0], 5))))  # fmt: skip
    workspace.schedule.labeled_feedback = 10
    return workspace


def a_round(index: int) -> QueryRound:
    empty = np.zeros((1, 2, 20, 30), np.float32)
    return QueryRound(index, empty, empty[..., 0], np.zeros((1, 2, 2), np.int64), 0, 0, 40, first=index == 0)


def test_the_critic_triggered_reset_fires_above_the_threshold_and_raises_it_and_the_replay_ratio(tmp_path) -> None:
    workspace = policer_workspace(tmp_path)
    step: CriticTriggeredReset = workspace.feedback_steps["critic_triggered_reset"]
    assert (step.threshold, step.increase, step.replay_ratio, step.last_round_step) == (25.0, 5.0, 1, 1000 + 3 * 1000)
    workspace.step = 2000
    step.after_update(workspace, SacUpdate({"actor_q": torch.tensor(20.0)}, lambda: None))
    step(workspace, a_round(1))  # 20 does not pass 25: nothing happens
    assert step.resets == 0 and float(step.best_q) == 20.0
    critic = workspace.agent.critic.state_dict()
    reward_net = {name: value.clone() for name, value in workspace.reward_model.net.state_dict().items()}
    step.after_update(workspace, SacUpdate({"actor_q": torch.tensor(30.0)}, lambda: None))
    step(workspace, a_round(2))
    assert step.resets == 1 and (step.threshold, step.increase) == (30.0, pytest.approx(4.5))
    assert not torch.equal(workspace.agent.critic.state_dict()["Q1.0.weight"], critic["Q1.0.weight"])
    assert not torch.equal(workspace.reward_model.net.state_dict()["weights.0"], reward_net["weights.0"])
    assert step.replay_ratio == 1  # the update of the reset's own step still runs at the old ratio
    step.after_update(workspace, SacUpdate({"actor_q": torch.tensor(50.0)}, lambda: None))
    assert step.replay_ratio == 2 and step.best_q == NO_Q_SEEN and workspace.updates_per_step == 2
    for expected_threshold in (34.5, 38.55):  # the rise shrinks by 0.9 every time
        step.after_update(workspace, SacUpdate({"actor_q": torch.tensor(1e3)}, lambda: None))
        step(workspace, a_round(3))
        step.after_update(workspace, SacUpdate({"actor_q": torch.tensor(0.0)}, lambda: None))
        assert step.threshold == pytest.approx(expected_threshold)
    assert step.replay_ratio == 4 and step.resets == 3
    step.threshold = 99.0
    step.after_update(workspace, SacUpdate({"actor_q": torch.tensor(1e3)}, lambda: None))
    step(workspace, a_round(4))
    assert step.threshold == 100.0 and step.replay_ratio == 4  # both capped
    workspace.step = 4000  # after the last round's step: one update per step again
    step.after_update(workspace, SacUpdate({"actor_q": torch.tensor(0.0)}, lambda: None))
    assert workspace.updates_per_step == 1
    step(workspace, a_round(0))  # the first round forgets the Q the pre-training critic saw
    assert step.best_q == NO_Q_SEEN


# ---------------------------------------------------------------------------------------------- PPE
def test_the_exploration_shift_spends_exactly_the_kl_budget_along_the_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(64, ACT, generator=generator), torch.randn(64, ACT, generator=generator) - 1
    gradient = torch.randn(64, ACT, generator=generator)
    for epsilon in (0.01, 0.1):
        shift = exploration_shift(gradient, log_std.exp().square(), epsilon)
        target = torch.distributions.Normal(mean, log_std.exp())
        behaviour = torch.distributions.Normal(mean + shift, log_std.exp())
        kl = torch.distributions.kl_divergence(behaviour, target).sum(-1)
        torch.testing.assert_close(kl, torch.full_like(kl, epsilon), rtol=1e-4, atol=1e-7)
        assert ((shift * gradient).sum(-1) > 0).all()  # uphill on the out-of-distribution degree
    assert torch.equal(exploration_shift(torch.zeros(2, ACT), torch.ones(2, ACT), 0.01), torch.zeros(2, ACT))


def trained_morse(store: EpisodeStore) -> MorseNetwork:
    """A Morse network fitted, as methods/ppe.py fits it, to the state-actions of the store's first half."""
    torch.manual_seed(0)
    net = MorseNetwork(OBS, ACT, 64, 2, 5.0)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    covered = torch.as_tensor(np.concatenate([episode.sa for episode in list(store)[:3]]))
    for _ in range(300):
        batch = covered[torch.randint(len(covered), (128,))]
        uniform = torch.cat([batch[:, :OBS], torch.rand(128, ACT) * 2 - 1], -1)
        loss = net.half_sq_distance(batch).mean() + net(uniform).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net


class FittedMorse:
    """What ppe_mixture reads of PPE's feedback step."""

    def __init__(self, net: MorseNetwork) -> None:
        self.net, self.device, self.trained = net, torch.device("cpu"), True


def redo_mixture_query(store: EpisodeStore, net: MorseNetwork, num: int, kappa: float, seed: int) -> np.ndarray:
    """Algorithm 1 redone here: every segment of the N = 4 newest episodes, its out-of-distribution degree (the mean
    of 1 − K over its steps, one segment at a time), 2κb of them drawn by P_out ∝ degree and 2(1 − κ)b of the rest
    by P_in ∝ 1 − degree, without replacement, paired in drawing order. The origins [num, 2, 2]."""
    origins, degrees = [], []
    for episode in store.recent(4):
        for start in range(len(episode.sa) - SEGMENT):
            with torch.no_grad():
                kernel = net(torch.as_tensor(episode.sa[start : start + SEGMENT])).double()
            origins.append((episode.index, start))
            degrees.append(float((1.0 - kernel).mean()))
    degree, rng, num_out = np.array(degrees), np.random.default_rng(seed), round(kappa * num)
    p_out = (degree + 1e-12) / (degree + 1e-12).sum()
    outside = rng.choice(len(degree), size=2 * num_out, replace=False, p=p_out)
    rest = np.setdiff1d(np.arange(len(degree)), outside)
    p_in = (1.0 - degree[rest] + 1e-12) / (1.0 - degree[rest] + 1e-12).sum()
    inside = rest[rng.choice(len(rest), size=2 * (num - num_out), replace=False, p=p_in)]
    return np.array(origins)[np.concatenate([outside, inside])].reshape(num, 2, 2)


def test_the_mixture_query_draws_kappa_b_pairs_by_their_out_of_distribution_degree_and_the_rest_by_its_inverse() -> (
    None
):
    store = seeded_store(episodes=8)
    net = trained_morse(store)
    num = 6
    for kappa in (0.5, 0.0, 1.0, 0.34):
        chosen = ppe_mixture(context(store, num, steps={"ppe_morse": FittedMorse(net)}, seed=5, ppe_kappa=kappa))
        np.testing.assert_array_equal(chosen.origins, redo_mixture_query(store, net, num, kappa, seed=5))
        np.testing.assert_array_equal(chosen.pairs, store.segment_pairs(chosen.origins, SEGMENT).pairs)
    # Drawn, not sorted: over seeds the out-of-distribution picks have a higher degree than the others on average,
    # yet the likeliest segment of P_out is not the one always picked.
    out_degree, in_degree, firsts = [], [], set()
    for seed in range(40):
        chosen = ppe_mixture(context(store, num, steps={"ppe_morse": FittedMorse(net)}, seed=seed, ppe_kappa=0.5))
        with torch.no_grad():
            degree = 1.0 - net(torch.as_tensor(chosen.pairs.reshape(-1, OBS + ACT))).reshape(num, -1).mean(1)
        out_degree.append(float(degree[:3].mean()))
        in_degree.append(float(degree[3:].mean()))
        firsts.add(tuple(chosen.origins[0, 0]))
    assert np.mean(out_degree) > np.mean(in_degree) and len(firsts) > 10
    # Untrained network, or the switch off: QPA's policy-aligned selection.
    untrained = FittedMorse(net)
    untrained.trained = False
    fitted = FittedMorse(net)
    aligned = queries.policy_aligned(context(store, num, seed=5)).pairs
    for ctx in (context(store, num, steps={"ppe_morse": untrained}, seed=5),
                context(store, num, steps={"ppe_morse": fitted}, seed=5, ppe_mixture_query=False)):  # fmt: skip
        np.testing.assert_array_equal(ppe_mixture(ctx).pairs, aligned)


def test_the_morse_network_says_which_state_actions_the_labels_cover_and_the_shift_moves_away_from_them() -> None:
    store = seeded_store(episodes=6)
    net = trained_morse(store)
    covered = torch.as_tensor(np.concatenate([episode.sa for episode in list(store)[:3]]))
    uniform = torch.cat([covered[:, :OBS], torch.rand(len(covered), ACT) * 2 - 1], -1)
    with torch.no_grad():
        assert net(covered).mean() > net(uniform).mean() + 0.3
    # At the covered states, the behaviour mean has a lower M than the target's mean (first order, small ε).
    mean = torch.atanh(covered[:, OBS:].clamp(-0.99, 0.99)).requires_grad_(True)
    degree = 1.0 - net(torch.cat([covered[:, :OBS], torch.tanh(mean)], -1))
    (gradient,) = torch.autograd.grad(degree.sum(), mean)
    shifted = mean.detach() + exploration_shift(gradient, torch.full_like(mean, 0.04), 0.001)
    with torch.no_grad():
        before = net(torch.cat([covered[:, :OBS], torch.tanh(mean)], -1))
        after = net(torch.cat([covered[:, :OBS], torch.tanh(shifted)], -1))
    assert (after < before).float().mean() > 0.95


def test_the_extension_chooses_every_training_action_once_the_network_is_trained_budget_spent_or_not(tmp_path) -> None:
    """Algorithm 2, line 3: a ~ π_E at every step after pre-training. Same noise, same state: π_E's action differs
    from the target policy's once the Morse network has been trained, whatever budget is left; before, and with
    ppe_extension=false, it is the target policy's."""
    obs = np.random.default_rng(0).normal(size=24).astype(np.float32)
    for extension in (True, False):
        workspace = make_workspace(tmp_path / str(extension), "method=ppe", f"ppe_extension={str(extension).lower()}")
        step = workspace.feedback_steps["ppe_morse"]
        actions = {}
        for trained, budget_left in ((False, True), (True, True), (True, False)):
            step.trained = trained
            workspace.schedule.total_feedback = 0 if budget_left else workspace.cfg.max_feedback
            assert workspace.schedule.budget_left == budget_left
            torch.manual_seed(1)
            behaviour = workspace.behaviour(workspace, obs)
            torch.manual_seed(1)
            target = workspace.agent.act(obs, sample=True)
            actions[(trained, budget_left)] = not np.array_equal(behaviour, target)
        assert actions == {(False, True): False, (True, True): extension, (True, False): extension}


def test_policer_trains_on_crops_of_45_to_55_steps_of_its_60_step_windows_on_dmc_and_on_meta_world(tmp_path) -> None:
    """use_crop_aug: windows of segment + 2 x dataaug_window = 60 steps, crops U{45 ... 55} shared by a pair, each
    window's start its own; Meta-World crops too (metaworld_crop)."""
    cfg = load_config("method=policer")
    assert cfg.segment == 60 and cfg.data_aug_ratio == 20 and cfg.metaworld_crop
    starts, lengths = crop_windows((4, 500), cfg.segment, qpa_crop_lengths(cfg.segment), cfg.data_aug_ratio,
                                   torch.Generator().manual_seed(0), torch.device("cpu"))  # fmt: skip
    assert set(lengths.unique().tolist()) == set(range(45, 56)) and lengths.shape[-2] == 1  # one length per pair
    assert bool((starts + lengths <= 60).all()) and (starts[..., 0, :] != starts[..., 1, :]).any()
    # Meta-World: the same labels trained with and without crops end in different reward models
    weights = {}
    for crop in (True, False):
        workspace = make_workspace(tmp_path / str(crop), "method=policer", "env=metaworld_drawer-open-v3",
                                   "segment=35", f"metaworld_crop={str(crop).lower()}", "reward_update=3")  # fmt: skip
        pairs = np.random.default_rng(1).normal(size=(10, 2, 35, 43)).astype(np.float32)
        workspace.preferences.add(pairs, np.tile([0.0, 1.0], 5))
        workspace.schedule.labeled_feedback = 10
        train_reward(workspace, a_round(0))
        weights[crop] = [p.detach().clone() for p in workspace.reward_model.net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(weights[True], weights[False], strict=True))


# ---------------------------------------------------------------------------------------------- runs
# Three rounds, at steps 1100, 1600 and 2100, so the step-2000 checkpoint holds a method's state between two of them.
TINY_SUCCESSOR = [*(item for item in TINY if not item.startswith(("num_train_steps", "num_interact", "max_feedback"))),
                  "num_train_steps=2500", "num_interact=500", "max_feedback=30", "env=walker_walk", "num_threads=1",
                  "device=cpu"]  # fmt: skip
ROUNDS, QUERIES = 3, 10  # max_feedback=30 in rounds of TINY's reward_batch=10
TRIGGER = "policer_q_threshold=-1000"  # every round after the first resets: the whole path runs in a tiny run


@pytest.mark.slow
def test_a_ppe_run_is_qpas_run_until_ppe_first_acts(tmp_path) -> None:
    """The Morse network draws its initial weights from its own stream and the first round's queries are QPA's, so
    up to the first query round (step 1100 here) a PPE run writes QPA's logs."""
    schedule = [item for item in TINY_SUCCESSOR if not item.startswith("num_train_steps")]
    logs = {}
    for method in ("qpa", "ppe"):
        train(tmp_path / method, *schedule, "num_train_steps=1100", f"method={method}")
        logs[method] = {name: pd.read_csv(tmp_path / method / name) for name in ("eval.csv", "train.csv")}
    for name, frame in logs["qpa"].items():
        columns = [column for column in frame.columns if column not in TIME_COLUMNS]
        pd.testing.assert_frame_equal(logs["ppe"][name][columns], frame[columns], check_exact=True, obj=name)
    assert list(logs["ppe"]["eval.csv"].step) == [0, 1000, 1100]


def test_bad_values_of_the_successor_keys_are_one_line_errors() -> None:
    cases = {
        "policer_tau=-1": "policer_tau=-1", "policer_q_increase=-1": "policer_q_increase=-1",
        "policer_q_increase_decay=1.5": "policer_q_increase_decay=1.5",
        "policer_max_replay_ratio=0": "policer_max_replay_ratio=0", "policer_q_threshold=abc": "policer_q_threshold",
        "ppe_epsilon=0": "ppe_epsilon=0", "ppe_kappa=1.5": "ppe_kappa=1.5", "ppe_lambda=0": "ppe_lambda=0",
        "ppe_morse_updates=0": "ppe_morse_updates=0", "ppe_morse_batch=0": "ppe_morse_batch=0",
        "ppe_morse_lr=0": "ppe_morse_lr=0", "ppe_extension=maybe": "ppe_extension='maybe'",
        "query_scheme=ppe_mixture": "needs the ppe_morse feedback step",
    }  # fmt: skip
    for override, message in cases.items():
        with pytest.raises(Exception, match=message) as error:
            load_config(override)
        assert "\n" not in str(error.value)


# Each paper's own settings where they differ from QPA's, written out here from PoLiCER's scripts/synthetic.sh and
# PPE's Table 10 independently of scripts/sweeps/: task: {key: value} of the resolved config. PoLiCER's segments are
# its windows: the script's segment + 2 x dataaug_window (5).
POLICER_RUNS = {
    "walker_walk": {"env": "walker_walk", "num_train_steps": 1_000_000, "max_feedback": 100, "reward_batch": 10,
                    "num_interact": 20000, "segment": 60, "policer_q_increase": 5.0, "actor_lr": 5e-4},
    "cheetah_run": {"num_train_steps": 1_000_000, "max_feedback": 100, "policer_q_increase": 5.0},
    "humanoid_stand": {"num_train_steps": 2_000_000, "max_feedback": 10000, "reward_batch": 50,
                       "num_interact": 5000, "policer_q_increase": 1.43, "actor_lr": 1e-4},
    "metaworld_drawer-open": {"max_feedback": 5000, "reward_batch": 50, "segment": 35, "actor_lr": 3e-4},
    "metaworld_door-open": {"max_feedback": 4000, "reward_batch": 40, "segment": 35, "policer_q_increase": 7.5},
    "metaworld_sweep-into": {"env": "metaworld_sweep-into-v3", "num_train_steps": 1_000_000, "max_feedback": 5000,
                             "reward_batch": 50, "num_interact": 5000, "segment": 35, "critic_lr": 3e-4},
    "metaworld_hammer": {"env": "metaworld_hammer-v3", "num_train_steps": 2_000_000, "max_feedback": 10000,
                         "reward_batch": 50, "segment": 35, "policer_q_increase": 7.5},
}  # fmt: skip
# PPE's Table 10: total queries, steps between rounds, queries per round, steps of the run.
PPE_BUDGETS = {
    "walker_walk": (100, 20000, 10, 500_000), "walker_run": (100, 20000, 10, 1_000_000),
    "cheetah_run": (100, 20000, 10, 1_000_000), "quadruped_walk": (1000, 30000, 100, 1_000_000),
    "quadruped_run": (1000, 30000, 100, 1_000_000), "humanoid_stand": (10000, 5000, 50, 2_000_000),
    "metaworld_drawer-open": (4000, 5000, 20, 1_000_000), "metaworld_sweep-into": (10000, 5000, 50, 2_000_000),
    "metaworld_hammer": (10000, 5000, 50, 2_000_000), "metaworld_door-open": (3000, 5000, 30, 1_000_000),
    "metaworld_door-unlock": (3000, 5000, 30, 1_000_000), "metaworld_button-press": (2000, 5000, 25, 1_000_000),
    "metaworld_window-open": (400, 5000, 10, 500_000),
}  # fmt: skip


def table_configs(name: str, methods: list[str] | None = None) -> dict[tuple[str, str], object]:
    """The checked config of every (task, method) of a sweep table, composed as the sweep composes it."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import sweep

    runs = sweep.plan_runs(sweep.load_table(name), [], methods or [], [1], [])
    return {(run.task, run.method): load_config(*run.overrides, "seed=1") for run in runs}


def test_the_policer_table_carries_its_scripts_settings_per_task() -> None:
    configs = table_configs("policer")
    assert {task for task, _ in configs} == set(POLICER_RUNS)
    for (task, _), cfg in configs.items():
        assert cfg.method == "policer" and cfg.scheme == "policy_likelihood" and cfg.reward_update == 200
        assert cfg.ensemble_size == 3 and cfg.data_aug_ratio == 20 and cfg.metaworld_crop and not cfg.hybrid_replay
        params = cfg.agent.params
        for key, value in POLICER_RUNS[task].items():
            got = getattr(params, key) if key.endswith("_lr") else getattr(cfg, key)
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (task, key)


def test_the_ppe_table_runs_qpa_settings_at_the_budgets_of_its_table_10() -> None:
    configs = table_configs("ppe", ["ppe", "ppe_extension_only", "ppe_mixture_only"])
    assert {task for task, _ in configs} == set(PPE_BUDGETS)  # every task of its Table 1
    for (task, method), cfg in configs.items():
        budget = (cfg.max_feedback, cfg.num_interact, cfg.reward_batch, cfg.num_train_steps)
        assert budget == PPE_BUDGETS[task], task
        assert cfg.max_reward_buffer_size == 10 and cfg.scheme == "ppe_mixture" and cfg.hybrid_replay  # Table 13
        lr = 5e-4 if task in ("walker_walk", "walker_run", "cheetah_run") else 1e-4  # Table 12
        assert cfg.agent.params.actor_lr == cfg.agent.params.critic_lr == lr, task
        assert cfg.run_label == method
        assert cfg.ppe_extension == (method != "ppe_mixture_only")
        assert cfg.ppe_mixture_query == (method != "ppe_extension_only")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["policer", "ppe"])
def test_a_person_teaches_each_successor_and_a_killed_replay_of_the_answers_resumes_to_the_same_run(
    method, tmp_path
) -> None:
    """Every teacher and exact resume in one chain: a person answers every query of a run (the page's API), a replay
    of those answers is killed after its step-2000 checkpoint, between two rounds, and its re-run (the Morse network,
    Q threshold, resets and replay ratio restored) writes the person's run's logs."""
    from test_human_browser import HumanRun

    overrides = [*TINY_SUCCESSOR, f"method={method}", *([TRIGGER] if method == "policer" else [])]
    person = HumanRun(tmp_path / "human", *overrides, "teacher=human", "human_port=0")
    for index in range(ROUNDS * QUERIES):
        person.answer(person.next_query(), ("left", "right", "equal")[index % 3])
    person.finish()
    trains = pd.read_csv(tmp_path / "human" / "train.csv")
    if method == "policer":
        assert trains.policer_resets.max() == 2 and trains.replay_ratio.max() == 2  # rounds 2 and 3 reset
    else:
        assert trains.ppe_queried_morse.notna().any() and (trains.ppe_shift.dropna() > 0).all()

    replay = [*overrides, "teacher=replay", f"labels_from={tmp_path / 'human' / 'labels.sqlite'}"]
    killed = tmp_path / "replay"
    process = subprocess.Popen([sys.executable, "train_QPA.py", *replay, f"hydra.run.dir={killed}"], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:  # after the step-2000 checkpoint, in the next episode
        if status_step(killed) == 2000:
            time.sleep(0.5)
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert f"resumed from {killed / 'checkpoint.pt'} at step 2000" in train(killed, *replay).stderr
    for log in ("eval.csv", "train.csv"):
        resumed, taught = (
            pd.read_csv(run / log).drop(columns=TIME_COLUMNS, errors="ignore") for run in (killed, tmp_path / "human")
        )
        pd.testing.assert_frame_equal(resumed, taught[resumed.columns])  # the person's log adds the label waits
    assert pd.read_csv(killed / "eval.csv").labeled_feedback.iloc[-1] == ROUNDS * QUERIES
