"""Logger: CSV rows and averaging, header widening, resume, crash leftovers, console text, TensorBoard, wandb."""

import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from logger import Logger


def header_count(path: Path) -> int:
    return sum(line.startswith("step,") for line in path.read_text().splitlines())


def test_rows_are_averaged_between_dumps_and_printed(tmp_path, capsys):
    with Logger(tmp_path) as logger:
        logger.log("train/episode_reward", 1.0, 1000)
        logger.log("train/episode_reward", torch.tensor(3.0), 1000)
        logger.log("train/critic_loss", torch.tensor(0.25), 1000)
        logger.log("train/critic_loss", np.float32(0.75), 1000)
        logger.log("train/total_feedback", 40, 1000)
        logger.log("train/duration", 1.5, 1000)
        logger.log("train/my_metric", 7, 1000)
        logger.dump(1000)
        logger.log("train/episode_reward", 5.0, 2000)
        logger.log("eval/episode_reward", np.float64(123.456), 2000)
        logger.dump()

    train = pd.read_csv(tmp_path / "train.csv")
    assert list(train.columns) == ["step", "episode_reward", "critic_loss", "total_feedback", "duration", "my_metric"]
    assert train["step"].tolist() == [1000, 2000]
    assert train["episode_reward"].tolist() == [2.0, 5.0]
    assert train.loc[0, "critic_loss"] == pytest.approx(0.5)
    assert train.loc[0, "total_feedback"] == 40
    assert np.isnan(train.loc[1, "critic_loss"])
    evals = pd.read_csv(tmp_path / "eval.csv")
    assert evals.to_dict("list") == {"step": [2000], "episode_reward": [123.456]}

    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert "train" in out[0] and "S: 1000" in out[0] and "R: 2.0000" in out[0] and "FB: 40" in out[0]
    assert "CR_LOSS: 0.5000" in out[0] and "D: 1.5s" in out[0] and "my_metric: 7" in out[0]
    assert "eval" in out[2] and "S: 2000" in out[2] and "R: 123.4560" in out[2]


def test_new_key_widens_header_and_keeps_old_rows(tmp_path):
    with Logger(tmp_path) as logger:
        logger.log("train/episode_reward", 1.0, 10)
        logger.dump(10)
        logger.log("train/episode_reward", 2.0, 20)
        logger.log("train/reward_loss", 0.3, 20)
        logger.dump(20)
        logger.log("train/episode_reward", 3.0, 30)
        logger.dump(30)
    csv = tmp_path / "train.csv"
    assert header_count(csv) == 1
    train = pd.read_csv(csv)
    assert list(train.columns) == ["step", "episode_reward", "reward_loss"]
    assert train["episode_reward"].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(train.loc[0, "reward_loss"]) and train.loc[1, "reward_loss"] == 0.3
    assert not list(tmp_path.glob(".*tmp"))


def test_resume_drops_later_rows_and_appends_without_second_header(tmp_path):
    with Logger(tmp_path) as logger:
        for step in (10, 20, 30):
            logger.log("train/episode_reward", float(step), step)
            logger.log("eval/episode_reward", float(step) + 0.5, step)
            logger.dump(step)
    with open(tmp_path / "train.csv", "a") as handle:
        handle.write("40,4")  # what a process killed inside a write could leave behind
    with Logger(tmp_path, resume_step=20) as logger:
        logger.log("train/episode_reward", 99.0, 30)
        logger.log("train/total_feedback", 10, 30)
        logger.dump(30)
    for name in ("train.csv", "eval.csv"):
        assert header_count(tmp_path / name) == 1
    train = pd.read_csv(tmp_path / "train.csv")
    assert train["step"].tolist() == [10, 20, 30]
    assert train["episode_reward"].tolist() == [10.0, 20.0, 99.0]
    assert train["total_feedback"].tolist()[-1] == 10
    assert pd.read_csv(tmp_path / "eval.csv")["step"].tolist() == [10, 20]


def test_fresh_run_replaces_old_logs(tmp_path):
    with Logger(tmp_path) as logger:
        logger.log("eval/episode_reward", 1.0, 10)
        logger.dump(10)
    with Logger(tmp_path) as logger:
        logger.log("eval/episode_reward", 2.0, 5)
        logger.dump(5)
    assert pd.read_csv(tmp_path / "eval.csv").to_dict("list") == {"step": [5], "episode_reward": [2.0]}


def test_bad_keys_and_values_are_rejected(tmp_path):
    with Logger(tmp_path) as logger:
        with pytest.raises(ValueError, match="train/<name>"):
            logger.log("episode_reward", 1.0, 0)
        with pytest.raises(ValueError, match="train/<name>"):
            logger.log("test/episode_reward", 1.0, 0)
        with pytest.raises(ValueError, match="elements"):
            logger.log("train/x", torch.zeros(3), 0)
        with pytest.raises(ValueError, match="type str"):
            logger.log("train/x", "1.0", 0)
        with pytest.raises(ValueError, match="group"):
            logger.dump(0, group="test")


def test_dump_one_group_keeps_the_other(tmp_path):
    with Logger(tmp_path) as logger:
        logger.log("train/batch_reward", 1.0, 5)
        logger.log("eval/episode_reward", 2.0, 5)
        logger.dump(5, group="eval")
        assert not (tmp_path / "train.csv").exists()
        logger.log("train/batch_reward", 3.0, 6)
        logger.dump(6)
    assert pd.read_csv(tmp_path / "train.csv").to_dict("list") == {"step": [6], "batch_reward": [2.0]}


def test_tensorboard_events_are_written(tmp_path):
    with Logger(tmp_path, save_tb=True) as logger:
        logger.log("eval/episode_reward", 5.0, 100)
        logger.dump(100)
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert b"eval/episode_reward" in events[0].read_bytes()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (it is optional)")
def test_wandb_offline_without_account(tmp_path, monkeypatch):
    for variable in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    log_dir = tmp_path / "run"
    wandb_init = {"project": "qpa-test", "name": "offline-check", "config": {"seed": 1}}
    with Logger(log_dir, use_wandb=True, wandb_init=wandb_init) as logger:
        logger.log("train/episode_reward", 1.5, 1000)
        logger.dump(1000)
        logger.log("eval/episode_reward", 2.5, 1000)
        logger.dump(1000)
    run_files = list((log_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    # wandb-core may still be writing the run file when finish() returns (it completes by process exit).
    deadline = time.monotonic() + 20
    while b"eval/episode_reward" not in run_files[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"eval/episode_reward" in run_files[0].read_bytes()
    assert pd.read_csv(log_dir / "eval.csv")["episode_reward"].tolist() == [2.5]
