"""RIME and MRN (methods/rime.py, methods/mrn.py): RIME's selection keeps clean labels and flips corrupted ones on a
constructed case, its warm start fits r̂ to the intrinsic reward; MRN's meta-update changes the reward model through
the virtual critic; both refuse bad values of their keys in one line, run from the command line and in sweeps, and
resume exactly."""

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
from test_methods import fill, make_workspace
from test_run_dir import status_step
from test_train import TINY

from methods.rime import KLStatistics, pair_kl

# Three rounds, at steps 1100, 1600 and 2100: a checkpoint at 2000 holds RIME's statistics between two of them.
TINY_ROUNDS = [*(item for item in TINY if not item.startswith(("num_train_steps", "num_interact", "max_feedback"))),
               "num_train_steps=2500", "num_interact=500", "max_feedback=30", "env=walker_walk", "num_threads=1",
               "device=cpu"]  # fmt: skip
RUNS = {
    "rime": ["method=rime", "teacher=mistake", "teacher_eps_mistake=0.3"],
    "mrn": ["method=mrn", "mrn_meta_steps=200"],
}


def confident_pairs(workspace, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment pairs every member of the workspace's reward model ranks the same way by a return gap above 12 (it
    prefers one of each with probability > 1 − 1e-5), and the label of the one it prefers: each segment repeats one
    state-action, one of those every member rewards most against one of those every member rewards least. The
    model is first made sure of itself: every member a copy of the first, its output layer scaled up so that r̂
    (tanh) saturates."""
    rng = np.random.default_rng(0)
    segment, width = workspace.cfg.segment, workspace.reward_model.input_dim
    points = torch.as_tensor(rng.normal(size=(100 * num, width)), dtype=torch.float32)
    with torch.no_grad():
        net = workspace.reward_model.net
        for parameter in [*net.weights, *net.biases]:
            parameter.copy_(parameter[:1].expand_as(parameter))
        net.weights[-1].mul_(100.0)
        net.biases[-1].zero_()
        rewards = workspace.reward_model.net(points).squeeze(-1)  # [E, P]
    high = rewards.min(0).values.argsort(descending=True)[:num]
    low = rewards.max(0).values.argsort()[:num]
    assert bool(((rewards[:, high] - rewards[:, low]).min() * segment > 12).all()), "too few confident pairs"
    second_preferred = torch.as_tensor(rng.random(num) < 0.5)
    first = torch.where(second_preferred[:, None], points[low], points[high])
    second = torch.where(second_preferred[:, None], points[high], points[low])
    pairs = torch.stack([first, second], dim=1)[:, :, None].expand(num, 2, segment, width).contiguous()
    return pairs, second_preferred.float()


def test_rime_keeps_clean_labels_and_flips_the_corrupted_ones(tmp_path) -> None:
    workspace = make_workspace(tmp_path, "method=rime", "reward_hidden_dim=64")
    step = workspace.feedback_steps["rime_train_reward"]
    pairs, clean = confident_pairs(workspace, 50)
    corrupted = torch.zeros(50, dtype=torch.bool)
    corrupted[::5] = True  # 20% of the labels flipped, as a mistaken teacher would
    labels = torch.where(corrupted, 1.0 - clean, clean)
    kl = pair_kl(workspace.reward_model, pairs, labels)
    assert bool((kl[corrupted] > -np.log(0.001)).all()) and bool((kl[~corrupted] < 0.01).all())
    # Nothing known of the KLs yet (x = 0, σ² = 1): the bound is −ln 1e-8 + min(β σ², 3); a pair the model is this
    # sure is mislabelled lies above it, so it is not trusted, only flipped.
    first_bound = step.lower_bound()
    assert first_bound == pytest.approx(-np.log(1e-8) + 3.0)
    for _ in range(3):
        trusted, flipped = step.select(kl)
        assert set(trusted.tolist()) == set(torch.nonzero(~corrupted).flatten().tolist())
        assert set(flipped.tolist()) == set(torch.nonzero(corrupted).flatten().tolist())
    # The trusted KLs agree (σ² → 0): the uncertainty term is gone from the bound.
    assert step.lower_bound() < first_bound - 2.9


def test_rime_statistics_move_as_its_code_moves_them() -> None:
    statistics = KLStatistics()
    statistics.update(np.array([1.0, 3.0]))
    # mean and maximum: 10% of the way to the batch's; variance: pooled with the prior (count 0)
    assert (statistics.mean, statistics.max, statistics.var, statistics.count) == pytest.approx((0.2, 0.3, 1.0, 2))
    statistics.update(np.array([5.0]))
    delta = 5.0 - 0.2
    assert statistics.var == pytest.approx((1.0 * 2 + 0.0 + delta**2 * 2 * 1 / 3) / 3)
    assert statistics.mean == pytest.approx(0.2 + 0.1 * delta) and statistics.max == pytest.approx(0.3 + 0.1 * 4.7)


def test_rime_warm_start_fits_r_hat_to_the_normalised_intrinsic_reward(tmp_path) -> None:
    workspace = make_workspace(tmp_path, "method=rime", "rime_warm_start_steps=20")
    fill(workspace.replay_buffer, np.random.default_rng(0))
    warm = workspace.extensions["rime_warm_start"]
    before = [parameter.detach().clone() for parameter in workspace.reward_model.net.parameters()]
    workspace.agent.update_state_ent(workspace.replay_buffer, 0, K=workspace.cfg.topK)  # the stats it normalises by
    warm.after_pretraining_update(workspace)
    assert any(not torch.equal(a, b) for a, b in zip(before, workspace.reward_model.net.parameters(), strict=True))
    assert warm.lowest < warm.highest
    assert "rime_warm_start" not in make_workspace(tmp_path / "pebble", "method=pebble").extensions


def test_mrn_meta_update_changes_the_reward_model_through_the_virtual_critic(tmp_path) -> None:
    workspace = make_workspace(tmp_path, "method=mrn", "mrn_meta_steps=100")
    fill(workspace.replay_buffer, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    pairs = rng.normal(size=(10, 2, workspace.cfg.segment, workspace.reward_model.input_dim)).astype(np.float32)
    workspace.preferences.add(pairs, (rng.random(10) < 0.5).astype(np.float32))
    bilevel = workspace.extensions["mrn_bilevel"]
    reward_before = [parameter.detach().clone() for parameter in workspace.reward_model.net.parameters()]
    critic_before = [parameter.detach().clone() for parameter in workspace.agent.critic.parameters()]
    workspace.step = 150
    assert bilevel.replace_update(workspace, hybrid=False) is None  # not a meta step: the loop's update
    workspace.step = 200
    update = bilevel.replace_update(workspace, hybrid=False)
    assert update is not None and "critic_loss" in update.metrics
    moved = [not torch.equal(a, b) for a, b in zip(reward_before, workspace.reward_model.net.parameters(), strict=True)]
    assert all(moved)  # every layer of every member: the outer loss reaches φ through y and θ'
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, workspace.agent.critic.parameters(), strict=True))
    stored = workspace.replay_buffer.reward[: len(workspace.replay_buffer)]
    with torch.no_grad():
        expected = workspace.reward_model.predict_reward(
            torch.cat([workspace.replay_buffer.obs, workspace.replay_buffer.action], -1)[: len(stored)]
        )
    torch.testing.assert_close(stored, expected)  # the buffer relabelled with the updated r̂
    workspace.schedule.total_feedback = workspace.cfg.max_feedback  # budget spent: no more meta updates
    assert bilevel.replace_update(workspace, hybrid=False) is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=rime rime_beta_min=5", "rime_beta_min=5.0 is invalid: must be <= rime_beta_init (3.0)"),
        (
            "method=rime rime_flip_probability=0.7",
            "rime_flip_probability=0.7 is invalid: must be a number in (0.0, 0.5]",
        ),
        ("method=rime rime_least_epochs=-1", "rime_least_epochs=-1 is invalid: must be an integer >= 0"),
        ("method=mrn mrn_meta_steps=-5", "mrn_meta_steps=-5 is invalid: must be an integer >= 0"),
        ("method=mrn mrn_outer_weight=0", "mrn_outer_weight=0.0 is invalid: must be a number > 0.0"),
    ],
)
def test_bad_values_of_rime_and_mrn_keys_are_one_line_errors(override, message) -> None:
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as error:
        load_config(*override.split())
    assert "\n" not in str(error.value)


def test_rime_and_mrn_presets_are_pebble_with_their_parts() -> None:
    rime, mrn = load_config("method=rime"), load_config("method=mrn")
    assert (rime.ensemble_size, rime.query_scheme, rime.hybrid_replay, rime.reward_update) == (
        3,
        "disagreement",
        False,
        50,
    )
    assert rime.feedback_steps == ["rime_train_reward", "relabel", "updates_after_first_round"]
    assert (mrn.ensemble_size, mrn.mrn_meta_steps, mrn.mrn_outer_weight, mrn.run_label) == (3, 1000, 0.1, "mrn")
    sweep = subprocess.run([sys.executable, "scripts/sweep.py", "noisy_teachers", "walker_walk", "--dry-run"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    commands = sweep.stdout.splitlines()
    assert any("method=rime" in line and "teacher=mistake" in line for line in commands)
    assert any("method=mrn" in line for line in commands)


def logs(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(run_dir / name).drop(columns=TIME_COLUMNS, errors="ignore")
            for name in ("eval.csv", "train.csv")}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RUNS))
def test_a_killed_rime_or_mrn_run_resumes_exactly(tmp_path, method) -> None:
    train(tmp_path / "whole", *TINY_ROUNDS, *RUNS[method])
    run_dir = tmp_path / "killed"
    command = [sys.executable, "train_QPA.py", *TINY_ROUNDS, *RUNS[method], f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:  # status.json names a checkpoint once it is written
        if status_step(run_dir) == 2000:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed; give it more steps"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    resumed = train(run_dir, *TINY_ROUNDS, *RUNS[method]).stderr
    assert f"resumed from {run_dir / 'checkpoint.pt'} at step 2000" in resumed  # between the second and third rounds
    for name, frame in logs(tmp_path / "whole").items():
        pd.testing.assert_frame_equal(logs(run_dir)[name], frame, check_exact=True, obj=name)
