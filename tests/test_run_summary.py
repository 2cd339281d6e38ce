"""The end-of-run summary from run directories written by the real Logger: Meta-World's success rate, SAC on the
true reward, a resumed run's sessions, and the paths it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from logger import Logger
from run_summary import logged_wall_time, summarise_run


def write_run(run_dir: Path, reward_source: str, sessions: list[list[tuple[int, float]]]) -> None:
    """A Meta-World run dir: evaluations at 0, 500 and 1000, train rows (step, total_time) per session."""
    config = {"env": "metaworld_drawer-open-v3", "run_label": "surf", "seed": 2, "num_eval_episodes": 10,
              "reward_source": reward_source, "max_feedback": 50, "save_video": False}  # fmt: skip
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    with Logger(run_dir) as logger:
        for step, reward, success, asked, labelled in ((0, 5.0, 0.0, 0, 0), (500, 40.0, 30.0, 20, 18),
                                                       (1000, 25.0, 10.0, 40, 36)):  # fmt: skip
            logger.log("eval/episode_reward", reward, step)
            logger.log("eval/success_rate", success, step)
            logger.log("eval/total_feedback", asked, step)
            logger.log("eval/labeled_feedback", labelled, step)
            logger.dump(step, group="eval")
    with Logger(run_dir, resume_step=1000) as logger:  # keeps eval.csv, adds train rows
        for session in sessions:
            for step, total_time in session:
                logger.log("train/total_time", total_time, step)
                logger.dump(step, group="train")


def test_meta_world_run_read_back(tmp_path) -> None:
    run_dir = tmp_path / "mw"
    write_run(run_dir, "learned", [[(500, 10.0), (1000, 20.0)]])
    lines = summarise_run(run_dir, figure=tmp_path / "f.png").splitlines()
    assert lines[0] == "run summary: metaworld_drawer-open-v3, surf, seed 2, 1000 environment steps"
    assert lines[1] == ("  evaluation return: 25.0 at the end (step 1000), best 40.0 (step 500); true reward, mean of "
                        "10 episodes")  # fmt: skip
    assert lines[2] == "  success rate: 10.0% at the end, best 30.0% (step 500)"
    assert lines[3] == "  labels used: 36 (40 queries asked, budget 50)"
    assert lines[4] == ("  training time: 0m 20s as train.csv logs it (to each session's last episode end), "
                        "50.0 environment steps/s")  # fmt: skip
    assert lines[5] == f"  figure: {tmp_path / 'f.png'}"
    assert lines[6] == "  video: none (save_video=false)"
    assert lines[7] == f"  logs: eval.csv, train.csv in {run_dir}"


def test_sac_run_timed_by_its_process_after_a_resume(tmp_path) -> None:
    run_dir = tmp_path / "sac"
    write_run(run_dir, "true", [[(500, 10.0)], [(1000, 7.0)]])
    lines = summarise_run(run_dir, wall_time=125.0, first_step=500).splitlines()
    assert lines[3] == "  labels used: none (reward_source=true: SAC on the environment's reward)"
    assert lines[4] == ("  wall time: 2m 05s (this process: steps 500 to 1000, resumed at step 500), "
                        "4.0 environment steps/s")  # fmt: skip
    assert lines[5].startswith(f"  figure: none yet; python -m plot curves {run_dir} --phases --random-baseline")


def test_logged_wall_time_adds_up_the_sessions() -> None:
    rows = [{"total_time": "3.0"}, {"total_time": "5.0"}, {"total_time": ""}, {"total_time": "2.0"},
            {"total_time": "4.5"}]  # fmt: skip
    assert logged_wall_time(rows) == pytest.approx(9.5)


def test_a_run_without_evaluations_is_a_clear_error(tmp_path) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    OmegaConf.save(OmegaConf.create({"env": "walker_walk", "seed": 1}), run_dir / "config.yaml")
    (run_dir / "eval.csv").write_text("")
    with pytest.raises(ValueError, match="has no evaluation yet"):
        summarise_run(run_dir)
