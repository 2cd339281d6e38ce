"""The schema is the one definition of every key, the core's and each method's: docs/CONFIG.md's reference is
generated from it, every key Hydra composes has a field, a section built by hand checks its values as the composed
config does, and a method's keys join it from the method's module."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO_ROOT, compose_config

import config_docs
import config_schema
import registry
from config_rules import ConfigError, Int, Section, key
from config_schema import QueryConfig, RewardConfig
from run_naming import method_preset


def test_the_config_reference_is_the_schema_table() -> None:
    documented = config_docs.documented_table((REPO_ROOT / "docs" / "CONFIG.md").read_text())
    assert documented is not None, "docs/CONFIG.md lost its generated config reference"
    assert documented == config_docs.reference_table(), "regenerate it with `python config_docs.py --write`"


def test_every_composed_key_is_a_schema_field_with_help_and_a_methods_keys_name_their_module() -> None:
    composed = set(compose_config())
    fields = {field.name: field for field in dataclasses.fields(config_schema.schema())}
    assert composed == set(fields)
    for section in config_schema.sections():
        for field in dataclasses.fields(section):
            assert field.metadata["doc"], f"{field.name} has no help"
    rows = {row.split(" | ")[0].strip("| `"): row for row in config_docs.reference_table().splitlines()[2:]}
    assert rows["ppe_kappa"].endswith("(methods/ppe.py) |") and rows["threshold_u"].endswith("(methods/surf.py) |")
    assert "(methods/" not in rows["segment"]


def test_a_method_cannot_declare_a_key_another_method_declares() -> None:
    @dataclasses.dataclass
    class Clashing(Section):
        ppe_kappa: int = key(1, Int(), "a second ppe_kappa")

    with pytest.raises(ValueError, match="Clashing declares 'ppe_kappa', which another method's keys already declare"):
        registry.register_keys(Clashing)


def test_sections_check_their_values_when_built_by_hand() -> None:
    with pytest.raises(ConfigError, match=r"^segment=10 is invalid: must be >= 16 for temporal cropping"):
        RewardConfig(segment=10)
    RewardConfig(segment=10, data_aug_ratio=0)
    with pytest.raises(ConfigError, match=r"^reward_batch=20 is invalid: must be <= max_feedback \(10\)"):
        QueryConfig(reward_batch=20, max_feedback=10)
    assert QueryConfig(feed_type=1).scheme == "disagreement"
    assert QueryConfig().history_size == 10 and QueryConfig(query_scheme="uniform").history_size == 100


def test_method_switches_are_the_fields_marked_switch() -> None:
    assert set(config_schema.method_switches()) == {
        "reward_source", "query_scheme", "large_batch", "ensemble_size", "data_aug_ratio", "semi_supervised",
        "threshold_u", "mu", "lambda_u", "crop_range", "dataaug_window", "hybrid_replay", "rune_beta_init",
        "rune_beta_decay", "feedback_steps", "policer_tau", "policer_q_threshold", "policer_q_increase",
        "policer_q_increase_decay", "policer_q_threshold_max", "policer_max_replay_ratio", "ppe_extension",
        "ppe_mixture_query", "ppe_epsilon", "ppe_kappa", "ppe_lambda", "ppe_morse_hidden_dim", "ppe_morse_hidden_depth",
        "ppe_morse_updates", "ppe_morse_batch", "ppe_morse_lr", "rime_alpha", "rime_beta_init", "rime_beta_min",
        "rime_beta_decay_epochs", "rime_flip_probability", "rime_least_epochs", "rime_warm_start_steps",
        "mrn_meta_steps", "mrn_outer_weight", "metaworld_crop",
    }  # fmt: skip
    assert method_preset("pebble")["ensemble_size"] == 3
    assert method_preset("surf")["semi_supervised"] is True  # surf inherits pebble, then qpa


ADD_SWITCH = """
from pathlib import Path
schema, builder = Path("config_schema.py"), Path("train_QPA.py")
anchor = 'data_aug_ratio: int = key(20, Int(0), "temporal-cropping copies per labelled pair; 0 = off", switch=True)\\n'
field = 'reward_weight_decay: float = key(0.0, Number(0.0, closed=True), "L2 weight decay", switch=True)\\n'
schema.write_text(schema.read_text().replace(anchor, anchor + "    " + field))
optimiser = "utils.adam(model.net.parameters(), lr=cfg.reward_lr"
builder.write_text(builder.read_text().replace(optimiser, optimiser + ", weight_decay=cfg.reward_weight_decay"))
preset = ["# @package _global_", "defaults:", "  - qpa", "  - _self_", "method: qpa_wd", "experiment: QPA-WD",
          "reward_weight_decay: 1.0e-4"]
Path("config/method/qpa_wd.yaml").write_text("\\n".join(preset) + "\\n")
"""

CHECK_SWITCH = """
import numpy as np, torch
import command_line, config_docs, config_rules, config_schema, train_QPA
from reward_trainer import RewardSeeds
def load(*overrides):
    cfg = command_line.compose_checked(list(overrides))
    return cfg.hydra.run.dir, config_schema.check_config(cfg)
directory, cfg = load("method=qpa_wd")
assert directory.endswith("walker_walk/qpa_wd/maxFeedback100_numInteract20000_seed1") and cfg.run_label == "qpa_wd"
seeds = RewardSeeds.of(1)
model = train_QPA.make_reward_model(cfg, 30, torch.device("cpu"), seeds.net)
trainer = train_QPA.make_reward_trainer(cfg, model, None, seeds, [])
assert trainer.opt.param_groups[0]["weight_decay"] == 1e-4
directory, cfg = load("reward_weight_decay=0.01")
assert "/qpa_reward_weight_decay-0.01/" in directory and cfg.run_label == "qpa_reward_weight_decay-0.01"
try:
    load("reward_weight_decay=-1")
except config_rules.ConfigError as error:
    assert str(error).startswith("reward_weight_decay=-1.0 is invalid: must be a number >= 0.0"), error
else:
    raise AssertionError("a negative weight decay was accepted")
assert "`reward_weight_decay`" in config_docs.reference_table()
print("ok")
"""


def test_adding_a_switch_takes_its_schema_field_and_the_code_that_reads_it(tmp_path) -> None:
    """docs/EXTENDING.md, "A new switch": the two edits (and a preset) in a copy of the repository give a typed,
    checked, documented switch that names its runs."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "exp", "tests", "figure", "bench"))
    subprocess.run([sys.executable, "-c", ADD_SWITCH], cwd=copy, check=True)
    edited = {path.relative_to(copy).as_posix() for path in copy.rglob("*") if path.is_file()
              and (not (REPO_ROOT / path.relative_to(copy)).exists()
                   or path.read_bytes() != (REPO_ROOT / path.relative_to(copy)).read_bytes())}  # fmt: skip
    assert edited == {"config_schema.py", "train_QPA.py", "config/method/qpa_wd.yaml"}
    result = subprocess.run([sys.executable, "-c", CHECK_SWITCH], cwd=copy, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
