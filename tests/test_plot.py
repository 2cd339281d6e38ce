"""plot.py on small run directories written by the real Logger: curves, compare, sweep, reference, errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from logger import Logger
from plot import _legend_entries, align_seeds, bootstrap_ci, load_reference, load_runs, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DMC_TASK = "walker_walk"
MW_TASK = "metaworld_door-open-v3"
METHOD_BASE = {"QPA": 300.0, "PEBBLE": 100.0}
EVAL_STEPS = (0, 1000, 2000, 3000)


def curve_value(task: str, method: str, seed: int, step: int, max_feedback: int = 100) -> float:
    """Eval metric of a fake run; the final (step 3000) value differs per method, seed and task."""
    if task == MW_TASK:
        return min(100.0, METHOD_BASE[method] / 5 + 10 * seed + step / 300)
    return METHOD_BASE[method] + 25.0 * seed + step / 10 + max_feedback


def write_run(run_dir: Path, task: str, method: str, seed: int, max_feedback: int = 100, step_shift: int = 0) -> None:
    """A run dir as train_QPA writes it: config.yaml plus train.csv/eval.csv from the Logger."""
    config = {"env": task, "seed": seed, "max_feedback": max_feedback, "experiment": method, "run_label": None}
    if method == "PEBBLE":
        # The label rule: run_label wins over experiment.
        config.update(experiment="pebble_ablation_x", run_label="PEBBLE")
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    with Logger(run_dir) as logger:
        for base_step in EVAL_STEPS:
            step = base_step + (step_shift if base_step else 0)
            feedback = min(max_feedback, 10 * (base_step // 1000))
            logger.log("train/total_feedback", feedback, step)
            logger.log("train/episode_reward", 1.0, step)
            logger.dump(step, group="train")
            logger.log("eval/episode_reward", curve_value(task, method, seed, base_step, max_feedback), step)
            if task == MW_TASK:
                logger.log("eval/success_rate", curve_value(task, method, seed, base_step), step)
            if method == "QPA":
                # PEBBLE runs leave total_feedback to train.csv, which plot must merge in.
                logger.log("eval/total_feedback", feedback, step)
            logger.dump(step, group="eval")


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "exp"
    for task in (DMC_TASK, MW_TASK):
        for method in METHOD_BASE:
            for seed in (1, 2):
                write_run(root / task / f"{method}_seed{seed}", task, method, seed, step_shift=5 * (seed - 1))
    # Misleading directory name: the config says QPA seed 2, so it must be grouped as such.
    (root / DMC_TASK / "QPA_seed2").rename(root / DMC_TASK / "PEBBLE_seed7")
    # A run that has not evaluated yet is skipped, not an error.
    (root / "pending").mkdir()
    OmegaConf.save(OmegaConf.create({"env": DMC_TASK, "seed": 3, "experiment": "QPA"}), root / "pending/config.yaml")
    (root / "pending/eval.csv").write_text("")
    return root


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def expected_final(task: str, method: str, max_feedback: int = 100) -> tuple[float, float]:
    finals = [curve_value(task, method, seed, EVAL_STEPS[-1], max_feedback) for seed in (1, 2)]
    return float(np.mean(finals)), float(np.std(finals))


def test_load_runs_groups_by_config_not_directory(runs_root):
    runs = load_runs(runs_root)
    assert len(runs) == 8
    misnamed = next(r for r in runs if r.source.endswith("PEBBLE_seed7"))
    assert (misnamed.task, misnamed.method, misnamed.seed) == (DMC_TASK, "QPA", 2)
    pebble = next(r for r in runs if r.method == "PEBBLE" and r.task == DMC_TASK)
    # total_feedback came from train.csv at the same step.
    assert pebble.evals["total_feedback"].tolist() == [0, 10, 20, 30]


def test_curves_default_subcommand_both_axes(runs_root, tmp_path, capsys):
    out = tmp_path / "fig" / "curves.png"
    assert main([str(runs_root), "--out", str(out), "--x", "both"]) == 0
    assert_png(out)
    assert str(out) in capsys.readouterr().out


def test_compare_tables_and_figures(runs_root, tmp_path):
    out_dir = tmp_path / "compare"
    assert main(["compare", str(runs_root / DMC_TASK), str(runs_root / MW_TASK), "--out-dir", str(out_dir)]) == 0
    assert_png(out_dir / f"{DMC_TASK}.png")
    assert_png(out_dir / f"{MW_TASK}.png")

    table = pd.read_csv(out_dir / "final_performance.csv")
    assert len(table) == 4
    for task, metric in ((DMC_TASK, "episode_reward"), (MW_TASK, "success_rate")):
        for method in METHOD_BASE:
            row = table[(table["task"] == task) & (table["method"] == method)].iloc[0]
            mean, std = expected_final(task, method)
            assert row["metric"] == metric and row["seeds"] == 2
            assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)

    # IQM over 2 tasks x 2 seeds = the mean of the middle two normalised scores.
    dmc_max = max(curve_value(DMC_TASK, m, s, EVAL_STEPS[-1]) for m in METHOD_BASE for s in (1, 2))
    iqm = pd.read_csv(out_dir / "iqm.csv").set_index("method")
    for method in METHOD_BASE:
        scores = [curve_value(DMC_TASK, method, s, EVAL_STEPS[-1]) / dmc_max for s in (1, 2)]
        scores += [curve_value(MW_TASK, method, s, EVAL_STEPS[-1]) / 100 for s in (1, 2)]
        assert iqm.loc[method, "iqm"] == pytest.approx(np.sort(scores)[1:3].mean())
        assert iqm.loc[method, "ci_low"] <= iqm.loc[method, "iqm"] <= iqm.loc[method, "ci_high"]
        assert iqm.loc[method, "tasks"] == 2 and iqm.loc[method, "runs"] == 4
    assert iqm.loc["QPA", "iqm"] > iqm.loc["PEBBLE", "iqm"]

    markdown = (out_dir / "final_performance.md").read_text()
    mean, std = expected_final(DMC_TASK, "QPA")
    assert f"| {DMC_TASK} | QPA | episode_reward | 2 | {mean:.2f} ± {std:.2f} |" in markdown
    assert "IQM" in markdown and "| QPA | 2 | 4 |" in markdown


def test_last_k_averages_the_final_evaluations(runs_root, tmp_path):
    out_dir = tmp_path / "compare"
    assert main(["compare", str(runs_root / DMC_TASK), "--out-dir", str(out_dir), "--last", "2"]) == 0
    row = pd.read_csv(out_dir / "final_performance.csv").set_index("method").loc["QPA"]
    finals = [np.mean([curve_value(DMC_TASK, "QPA", s, step) for step in EVAL_STEPS[-2:]]) for s in (1, 2)]
    assert row["mean"] == pytest.approx(np.mean(finals))


def test_sweep_groups_by_max_feedback(tmp_path):
    root = tmp_path / "sweep"
    for max_feedback in (100, 200):
        for seed in (1, 2):
            write_run(root / f"run_{max_feedback}_{seed}", DMC_TASK, "QPA", seed, max_feedback)
    out_dir = tmp_path / "figure"
    assert main(["sweep", str(root), "--out-dir", str(out_dir), "--x", "feedback"]) == 0
    assert_png(out_dir / f"{DMC_TASK}.png")
    table = pd.read_csv(out_dir / "final_performance.csv").set_index("max_feedback")
    assert sorted(table.index) == [100, 200]
    for max_feedback in (100, 200):
        mean, std = expected_final(DMC_TASK, "QPA", max_feedback)
        assert table.loc[max_feedback, "method"] == f"QPA fb={max_feedback}"
        assert table.loc[max_feedback, "mean"] == pytest.approx(mean)
        assert table.loc[max_feedback, "std"] == pytest.approx(std)
    assert len(pd.read_csv(out_dir / "iqm.csv")) == 2


def test_reference_export_and_overlay(runs_root, tmp_path):
    reference_dir = tmp_path / "reference"
    qpa_dir = tmp_path / "qpa_only"
    qpa_dir.mkdir()
    for run in runs_root.glob(f"{DMC_TASK}/*"):
        if "QPA" in OmegaConf.load(run / "config.yaml").experiment:
            run.rename(qpa_dir / run.name)
    assert main(["export-reference", str(qpa_dir), "--name", "qpa_small", "--out", str(reference_dir)]) == 0
    exported = pd.read_csv(reference_dir / "qpa_small.csv")
    assert list(exported.columns) == ["task", "method", "seed", "step", "total_feedback", "episode_reward"]
    assert len(exported) == 2 * len(EVAL_STEPS) and set(exported["seed"]) == {1, 2}
    notes = (reference_dir / "README.md").read_text()
    assert "## qpa_small" in notes and f"--name qpa_small --out {reference_dir}`" in notes  # how to redo it

    reference = load_reference(reference_dir)
    assert {(r.method, r.seed, r.reference) for r in reference} == {("QPA", 1, True), ("QPA", 2, True)}
    assert reference[0].evals["episode_reward"].iloc[-1] == curve_value(DMC_TASK, "QPA", 1, EVAL_STEPS[-1])

    plain, overlaid = tmp_path / "plain.png", tmp_path / "overlaid.png"
    assert main(["curves", str(runs_root / DMC_TASK), "--out", str(plain)]) == 0
    assert main(["curves", str(runs_root / DMC_TASK), "--out", str(overlaid), "--reference", str(reference_dir)]) == 0
    assert_png(overlaid)
    assert overlaid.read_bytes() != plain.read_bytes()


def test_seeds_at_different_steps_are_interpolated():
    grid, values = align_seeds(
        [(np.array([0.0, 1000, 2000]), np.array([0.0, 10, 20])), (np.array([0.0, 1005]), np.array([2.0, 12.05]))]
    )
    assert grid.tolist() == [0.0, 1000.0, 1005.0]
    assert values[:, 1].tolist() == pytest.approx([10.0, 12.0])
    low, high = bootstrap_ci(values)
    assert np.all(low <= values.mean(0)) and np.all(values.mean(0) <= high)
    assert low[0] == pytest.approx(0.0) and high[0] == pytest.approx(2.0)


def test_path_without_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "no runs under" in capsys.readouterr().err
    assert main(["curves", str(tmp_path / "reference_missing"), "--reference", str(tmp_path / "nothing")]) == 2
    assert "no reference CSVs" in capsys.readouterr().err
    result = subprocess.run(
        [sys.executable, "-m", "plot", str(tmp_path / "missing")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("plot: error: path")
    assert "does not exist" in result.stderr


def test_compare_on_a_train_metric_logged_at_query_rounds(tmp_path) -> None:
    """`--metric query_log_likelihood` reads train.csv rows, draws every method that logged it and leaves out the
    one that did not (SAC on the true reward asks no queries)."""
    root = tmp_path / "exp"
    query_steps = (1000, 2000, 3000)
    for method, offset in (("QPA", -2.0), ("PEBBLE", -40.0), ("SAC", None)):
        for seed in (1, 2):
            run_dir = root / f"{method}_seed{seed}"
            run_dir.mkdir(parents=True)
            config = {"env": DMC_TASK, "seed": seed, "max_feedback": 30, "experiment": method, "run_label": None}
            OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
            with Logger(run_dir) as logger:
                for index, step in enumerate(query_steps):
                    logger.log("train/total_feedback", 10 * (index + 1), step)
                    if offset is not None:
                        logger.log("train/query_log_likelihood", offset + index - seed, step)
                    logger.dump(step, group="train")
                    logger.log("eval/episode_reward", 100.0 + step / 100, step)
                    logger.dump(step, group="eval")
    out_dir = tmp_path / "alignment"
    assert main(["compare", str(root), "--out-dir", str(out_dir), "--metric", "query_log_likelihood",
                 "--x", "both", "--reps", "200"]) == 0  # fmt: skip
    assert (out_dir / f"{DMC_TASK}.png").read_bytes()[:8] == PNG_MAGIC
    table = pd.read_csv(out_dir / "final_performance.csv").set_index("method")
    assert sorted(table.index) == ["PEBBLE", "QPA"]
    assert table.loc["QPA", "mean"] == pytest.approx(-2.0 + 2 - 1.5)  # last round, mean over seeds 1 and 2
    assert table.loc["PEBBLE", "mean"] == pytest.approx(-40.0 + 2 - 1.5)
    assert (table["metric"] == "query_log_likelihood").all()


def test_the_one_legend_of_a_figure_of_several_tasks_has_one_entry_per_curve() -> None:
    """Panels that differ in seeds give the range; in the random policy's score, the panels show it."""
    entries = [("qpa", "QPA (1 seed)"), ("random", "uniformly random policy: 3.7 (10 episodes)"),
               ("pebble", "PEBBLE (1 seed)"), ("qpa 2", "QPA (2 seeds)"), ("pebble 2", "PEBBLE (1 seed)"),
               ("random 2", "uniformly random policy: 33.3 (10 episodes)")]  # fmt: skip
    assert _legend_entries(entries) == {"QPA (1-2 seeds per task)": "qpa", "PEBBLE (1 seed)": "pebble",
                                             "uniformly random policy (10 episodes)": "random"}  # fmt: skip
    one_task = entries[:3]
    assert _legend_entries(one_task) == {label: handle for handle, label in one_task}
