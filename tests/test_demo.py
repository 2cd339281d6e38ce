"""`make demo` at a tiny budget: its run films, its figure explains itself (the artists the plot options claim),
its still frame is the last video's last frame, and its last console lines summarise the run."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, built_once
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from PIL import Image
from test_train import TINY

import plot
from video import decode

REFERENCE = REPO_ROOT / "figure" / "reference" / "compare_quick.csv"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The demo target as `make demo` runs it, installed packages as they are, at TINY's budget."""
    return built_once(tmp_path_factory, "demo", make_demo)


def make_demo(root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    variables = {
        "PY": sys.executable,
        "DEMO_RUN": str(root / "run"),
        "DEMO_FIGURE": str(root / "demo.png"),
        "DEMO_STILL": str(root / "demo_last_frame.png"),
        "DEMO_OVERRIDES": shlex.join([*TINY, "video_fps=10"]),
        "DEMO_THREADS": "1",  # beside the other test worker
    }
    command = ["make", "--no-print-directory", "-o", "install", "demo", *(f"{k}={v}" for k, v in variables.items())]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return root, result


def test_make_demo_trains_with_two_threads() -> None:
    planned = subprocess.run(["make", "--no-print-directory", "-n", "-o", "install", "demo"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert "train_QPA.py +preset=quick env=walker_walk save_video=true num_threads=2 " in planned


@pytest.mark.slow
def test_make_demo_writes_figure_still_frame_and_videos_and_ends_with_the_summary(demo) -> None:
    root, result = demo
    run_dir = root / "run"
    assert sorted(path.name for path in (run_dir / "video").iterdir()) == ["eval_0.mp4", "eval_2000.mp4"]
    for image in ("demo.png", "demo_last_frame.png"):
        assert Image.open(root / image).format == "PNG"
    lines = result.stdout.strip().splitlines()
    assert sum(line.startswith("run summary:") for line in lines) == 1  # printed once, by the training run
    start = next(index for index, line in enumerate(lines) if line.startswith("run summary:"))
    summary = lines[start : start + 7]
    evals = pd.read_csv(run_dir / "eval.csv")
    assert summary[0] == "run summary: walker_walk, qpa, seed 1, 2000 environment steps"
    best = evals.episode_reward.idxmax()
    assert summary[1].startswith(
        f"  evaluation return: {evals.episode_reward.iloc[-1]:.1f} at the end (step 2000), "
        f"best {evals.episode_reward[best]:.1f} (step {evals.step[best]})"
    )
    assert summary[2] == "  labels used: 20 (20 queries asked, budget 20)"
    # The training process times itself: steps 0 to 2000 of this process.
    assert summary[3].startswith("  wall time: ") and "(this process: steps 0 to 2000)" in summary[3]
    assert summary[4].startswith("  figure: none yet; python -m plot curves")
    assert summary[5] == f"  video: {run_dir / 'video' / 'eval_2000.mp4'} (the last of 2 in that folder)"
    assert summary[6] == f"  logs: eval.csv, train.csv in {run_dir}"
    # After the figures are drawn, the demo adds what that summary lacks: the figures, and the reference band (the
    # reference runs evaluate every 5k steps, the tiny demo ends at 2000).
    assert lines[-2:] == [f"  figure: {root / 'demo.png'}, still frame: {root / 'demo_last_frame.png'}",
                          "  reference: none for QPA on walker_walk at step 2000 in compare_quick.csv"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("offsets", "where"), [((-1, 1, 2), "inside"), ((1, 2, 3), "below"), ((-3, -2, -1), "above")])
def test_the_summary_says_where_the_run_ends_against_the_reference_seeds(demo, tmp_path, offsets, where) -> None:
    root, _ = demo
    final = float(pd.read_csv(root / "run" / "eval.csv").episode_reward.iloc[-1])
    rows = [
        ("walker_walk", method, seed, step, 0, final + offset if step == 2000 else 0.0)
        for seed, offset in enumerate(offsets, 1)
        for step in (0, 2000)
        for method in ("qpa", "pebble")
    ]
    reference = tmp_path / "ref.csv"
    pd.DataFrame(rows, columns=plot.REFERENCE_COLUMNS).to_csv(reference, index=False)
    line = plot.reference_band(root / "run", plot.load_reference(reference))
    low, high = final + offsets[0], final + offsets[-1]
    assert line == (
        f"  reference: QPA on walker_walk, 3 seeds (ref.csv), ended at {low:.1f} to {high:.1f} "
        f"(mean {final + np.mean(offsets):.1f}) at step 2000: this run's {final:.1f} is {where} that range"
    )


@pytest.mark.slow
def test_the_demo_figure_draws_what_its_options_claim(demo) -> None:
    root, _ = demo
    runs = plot.load_runs(root / "run")
    reference = plot.load_reference(REFERENCE, ["qpa", "pebble", "sac_true"])
    figure = plot.draw_curves(runs, "step", reference=reference, band="range", phases=True, random_baseline=2)
    ax = figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("environment steps", "evaluation return (true reward)")

    # TINY: 300 random steps, then state-entropy pre-training to step 1100, then feedback to the end, 2000.
    spans = [(patch.get_x(), patch.get_x() + patch.get_width()) for patch in ax.patches]
    assert spans == [(0, 300), (300, 1100), (1100, 2000)]
    names = ["random seed steps", "PEBBLE state-entropy pre-training", "preference feedback"]
    assert [text.get_text() for text in ax.texts] == names
    # Both query rounds (steps 1100 and 1400) fall in the episode from step 1000; 20 labels by its end.
    (top,) = ax.child_axes
    assert list(top.get_xticks()) == [1000] and [t.get_text() for t in top.get_xticklabels()] == ["20"]

    lines = {line.get_label(): line for line in ax.get_lines()}
    evals = pd.read_csv(root / "run" / "eval.csv")
    qpa = lines["QPA (1 seed)"]
    assert qpa.get_linestyle() == "-" and list(qpa.get_xdata()) == list(evals.step)
    np.testing.assert_allclose(qpa.get_ydata(), evals.episode_reward)
    # Each curve has its band, drawn right after it in its colour.
    bands = [collection for collection in ax.collections if isinstance(collection, PolyCollection)]
    curves = [line for label, line in lines.items() if not label.startswith("uniformly random policy")]
    assert len(bands) == len(curves) == 4
    table = pd.read_csv(REFERENCE)
    references = [("pebble", "PEBBLE"), ("qpa", "QPA"), ("sac_true", "SAC on the true reward")]
    for (method, label), band in zip(references, bands[1:]):
        rows = table[table.method == method]
        line = lines[f"{label}, reference (5 seeds)"]
        assert line.get_linestyle() == "--"
        np.testing.assert_allclose(line.get_ydata(), rows.groupby("step").episode_reward.mean())
        assert tuple(band.get_facecolor()[0][:3]) == to_rgb(line.get_color())
        y = band.get_paths()[0].vertices[:, 1]  # min to max over the 5 seeds at each step
        assert (y.min(), y.max()) == pytest.approx((rows.episode_reward.min(), rows.episode_reward.max()))
    random_line = next(line for label, line in lines.items() if label.startswith("uniformly random policy"))
    score = plot.random_policy_scores("walker_walk", 2)["episode_reward"]
    assert list(random_line.get_ydata()) == [score, score] and f"{score:.1f} (2 episodes)" in random_line.get_label()
    legend = figure.legends[0]
    assert {text.get_text() for text in legend.get_texts()} == set(lines)
    assert legend.get_title().get_text() == "mean over seeds; band: min to max over seeds"


@pytest.mark.slow
def test_still_frames_come_from_the_last_video(demo, tmp_path) -> None:
    root, _ = demo
    frames = decode(root / "run" / "video" / "eval_2000.mp4")
    assert np.array_equal(np.asarray(Image.open(root / "demo_last_frame.png")), frames[-1])
    strip = tmp_path / "strip.png"
    assert plot.main(["still", str(root / "run" / "video" / "eval_0.mp4"), "--out", str(strip), "--frames", "3"]) == 0
    first = decode(root / "run" / "video" / "eval_0.mp4")
    expected = np.concatenate([first[0], first[(len(first) - 1) // 2], first[-1]], axis=1)
    assert np.array_equal(np.asarray(Image.open(strip)), expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--reference", str(REFERENCE), "--reference-methods", "pebbel"], "allowed: pebble, qpa, sac_true"),
        (["--reference-methods", "pebble"], "--reference-methods pebble needs --reference PATH"),
        (["--random-baseline", "0"], "--random-baseline 0 is not valid; allowed: an integer >= 1"),
    ],
)
def test_curves_refuses_bad_story_options_in_one_line(demo, tmp_path, capsys, arguments, message) -> None:
    root, _ = demo
    assert plot.main(["curves", str(root / "run"), "--out", str(tmp_path / "x.png"), *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("plot: error: ") and message in error[0]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_still_refuses_a_run_without_videos_and_too_many_frames(demo, tmp_path, capsys) -> None:
    root, _ = demo
    (tmp_path / "novideo").mkdir()
    assert plot.main(["still", str(tmp_path / "novideo"), "--out", str(tmp_path / "x.png")]) == 2
    assert "has no video/eval_<step>.mp4" in capsys.readouterr().err
    video = root / "run" / "video" / "eval_0.mp4"
    assert plot.main(["still", str(video), "--out", str(tmp_path / "x.png"), "--frames", "9999"]) == 2
    assert f"allowed: 1 to {len(decode(video))}" in capsys.readouterr().err


def test_random_policy_scores_are_seeded_and_give_meta_world_its_success_rate() -> None:
    scores = plot.random_policy_scores("metaworld_drawer-open-v3", 2)
    assert set(scores) == {"episode_reward", "success_rate"} and 0.0 <= scores["success_rate"] <= 100.0
    assert plot.random_policy_scores("metaworld_drawer-open-v3", 2) == scores
    assert plot.random_policy_scores("metaworld_drawer-open-v3", 2, seed=1) != scores


def test_query_rounds_sit_at_the_start_of_their_episode_with_the_labels_used() -> None:
    train = pd.DataFrame({"step": [1000, 2000, 3000, 4000], "total_feedback": [0, 10, 10, 30],
                          "labeled_feedback": [0, 8, 8, 25]})  # fmt: skip
    run = plot.Run("walker_walk", "qpa", 1, 30, pd.DataFrame({"step": [0, 4000]}), "test", train=train)
    assert plot.query_rounds(run) == [(1000.0, 8), (3000.0, 25)]  # a skipping teacher: fewer labels than queries
