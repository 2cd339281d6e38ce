"""End-to-end training runs on real environments with tiny budgets: logs, feedback schedule, reference command
lines, bad input, kill-and-resume and determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, SMALL_NETWORKS, TIME_COLUMNS, built_once, load_config, train
from omegaconf import OmegaConf

from config_schema import ConfigError

TINY = [
    "num_train_steps=2000",
    "num_seed_steps=300",
    "num_unsup_steps=800",
    "num_interact=300",
    "max_feedback=20",
    "reward_batch=10",
    "segment=20",
    "reward_update=50",
    "eval_frequency=1000",
    "agent.params.batch_size=32",
    *SMALL_NETWORKS,
]


@pytest.fixture(scope="module")
def walker_run(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "walker", train_walker)


def train_walker(root: Path) -> Path:
    train(root / "run", "env=walker_walk", *TINY)
    return root / "run"


@pytest.mark.slow
def test_walker_run_logs_everything_and_spends_the_feedback_budget_exactly(walker_run):
    for name in ("config.yaml", "train.csv", "eval.csv", "checkpoint.pt", "status.json"):
        assert (walker_run / name).exists(), name
    evals = pd.read_csv(walker_run / "eval.csv")
    trains = pd.read_csv(walker_run / "train.csv")
    assert list(evals.step) == [0, 1000, 2000]
    assert {"episode", "episode_reward", "episode_reward_hat", "total_feedback", "labeled_feedback"} <= set(evals)
    assert evals.total_feedback.iloc[-1] == 20  # 2 batches of 10 at steps 1100 and 1400, then the budget is spent
    assert evals.labeled_feedback.iloc[-1] == 20  # the oracle teacher answers every query
    expected = {
        "episode_reward",
        "episode_reward_hat",
        "reward_train_acc",
        "reward_loss",
        "critic_loss",
        "actor_loss",
        "alpha_loss",
        "alpha",
        "fps",
        "total_time",
    }
    assert expected <= set(trains), expected - set(trains)
    assert trains.step.is_unique and evals.step.is_unique
    assert (walker_run / "status.json").read_text().count('"finished"') == 1
    assert not (walker_run / "train_QPA.log").exists()  # Hydra's job log would stay empty: the run prints


@pytest.mark.slow
def test_metaworld_run_logs_success_rate(tmp_path):
    run_dir = tmp_path / "mw"
    train(run_dir, "env=metaworld_drawer-open-v2", *TINY, "eval_frequency=500")
    evals = pd.read_csv(run_dir / "eval.csv")
    assert "success_rate" in evals and evals.success_rate.between(0, 100).all()
    saved = (run_dir / "config.yaml").read_text()
    assert "hidden_depth: 3" in saved  # the Meta-World SAC config was selected automatically
    assert evals.step.iloc[-1] == 2000


def flat(node: dict, prefix: str = "") -> dict:
    """A nested mapping's leaves as {'a.b.c': value}."""
    leaves = {}
    for name, value in node.items():
        leaves.update(flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}": value})
    return leaves


@pytest.mark.slow
@pytest.mark.parametrize(("task", "preset"), [("cheetah_run", "quick"), ("metaworld_drawer-open", "quick_metaworld")])
def test_each_familys_cpu_preset_composes_over_a_paper_task_and_trains(tmp_path, task, preset):
    """The preset wins over the task's paper settings; what it leaves alone (the task's env, N) stays the task's."""
    config = OmegaConf.structured(load_config(f"task={task}", f"+preset={preset}"))
    task_values = flat(OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "config" / "task" / f"{task}.yaml")))
    preset_values = flat(OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "config" / "preset" / f"{preset}.yaml")))
    for name, value in preset_values.items():
        assert OmegaConf.select(config, name) == value, name
    for name in ("env", "max_reward_buffer_size"):
        if name in task_values and name not in preset_values:
            assert OmegaConf.select(config, name) == task_values[name], name
    run_dir = tmp_path / "run"
    train(run_dir, f"task={task}", f"+preset={preset}", *TINY, "eval_frequency=500")
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.preset_family == preset_values["preset_family"] and saved.env == config.env
    assert pd.read_csv(run_dir / "eval.csv").total_feedback.iloc[-1] == 20


@pytest.mark.slow
@pytest.mark.parametrize("method", ["qpa", "pebble"])
def test_a_gymnasium_mujoco_task_trains_from_the_command_line(tmp_path, method):
    """Hopper-v5: its episodes end where the hopper falls (terminated, shorter than the 1000-step limit), and the
    scripted teacher labels by the task's own reward."""
    run_dir = tmp_path / "hopper"
    train(run_dir, "env=Hopper-v5", f"method={method}", *TINY)
    evals, trains = pd.read_csv(run_dir / "eval.csv"), pd.read_csv(run_dir / "train.csv")
    # evaluated at the first episode end at least 1000 steps after the last evaluation, and at the end
    assert len(evals) == 3 and 1000 <= evals.step[1] < 1100 and evals.step[2] == 2000
    assert evals.total_feedback.iloc[-1] == 20
    lengths = trains.step.diff().dropna()
    assert (lengths < 1000).all() and lengths.nunique() > 1  # episodes of many lengths, none at the time limit
    assert OmegaConf.load(run_dir / "config.yaml").env == "Hopper-v5"


@pytest.mark.slow
def test_reference_command_line_runs_unchanged_with_shrunk_step_budgets(tmp_path):
    """The walker_walk line of the reference's run_QPA.sh with its step counts shrunk (seed, unsupervised, reset,
    eval and buffer budgets appended); wandb runs offline and device='cuda' falls back to the CPU."""
    line = (
        "env=walker_walk agent.params.actor_lr=0.0005 agent.params.critic_lr=0.0005 gradient_update=1 "
        "activation=tanh num_unsup_steps=10 num_train_steps=1020 num_interact=20000 max_feedback=100 "
        "reward_batch=10 reward_update=2000 teacher_beta=-1 teacher_gamma=1 teacher_eps_mistake=0 "
        "teacher_eps_skip=0 teacher_eps_equal=0 segment=50 max_reward_buffer_size=10 data_aug_ratio=20 "
        "ensemble_size=1 explore=false her_ratio=0.5 wandb=true device='cuda' seed=1 "
        "num_seed_steps=990 reset_update=10 eval_frequency=1000 num_eval_episodes=2"
        " replay_buffer_capacity=2000"  # the buffer follows num_train_steps; it must hold one 1024 batch
    )
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    command = [sys.executable, "train_QPA.py", *line.split(), f"hydra.run.dir={tmp_path / 'ref'}"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = pd.read_csv(tmp_path / "ref" / "eval.csv")
    assert evals.total_feedback.iloc[-1] == 10
    assert list((tmp_path / "ref").glob("wandb/offline-run-*")), "wandb offline run missing"


# Every key a user can set, with a value that cannot work and what the one-line error must say about it.
BAD_VALUES = [
    ("env=walker_wlak", "walker_walk"),
    ("env=metaworld_nope-v2", "metaworld_nope-v2"),
    ("env=HalfCheeta-v5", "closest: HalfCheetah-v5"),
    ("env=CartPole-v1", "env=CartPole-v1 is not supported: its action space Discrete(2) is not a flat continuous Box"),
    ("num_train_steps=-5", "num_train_steps=-5"),
    ("max_feedback=0", "max_feedback=0"),
    ("agent.params.batch_size=0", "agent.params.batch_size=0"),
    ("segment=1500", "episode length"),
    ("num_seed_steps=200 num_unsup_steps=100", "one complete episode"),
    ("segment=10", "temporal cropping"),
    ("reward_batch=200", "must be <= max_feedback"),
    ("her_ratio=1.5", "her_ratio=1.5"),
    ("max_reward_buffer_size=0", "max_reward_buffer_size=0"),
    ("ensemble_size=0", "ensemble_size=0"),
    ("activation=gelu", "allowed: tanh, sig, relu"),
    ("query_scheme=best", "query_scheme='best'"),
    ("feed_type=9", "feed_type=9"),
    ("explore=2", "explore=2"),
    ("device=tpu", "device='tpu'"),
    ("device=cuda:abc", "device='cuda:abc'"),
    ("num_threads=0", "num_threads=0"),
    ("device=cpu cuda_graphs=true", "cuda_graphs=True is invalid: needs a CUDA GPU, and device=cpu runs on the CPU"),
    ("cuda_graphs=maybe", "cuda_graphs='maybe' is invalid: allowed: auto, true, false"),
    ("tf32=maybe", "tf32='maybe'"),
    ("reward_lr=abc", "reward_lr='abc'"),
    ("reward_lr=0", "reward_lr=0"),
    ("teacher_beta=abc", "teacher_beta='abc'"),
    ("teacher_gamma=0", "teacher_gamma=0"),
    ("teacher_eps_mistake=2", "teacher_eps_mistake=2"),
    ("label_margin=-0.1", "label_margin=-0.1"),
    ("agent.params.discount=abc", "agent.params.discount='abc'"),
    ("agent.params.discount=1.5", "agent.params.discount=1.5"),
    ("agent.params.critic_tau=0", "agent.params.critic_tau=0"),
    ("agent.params.actor_lr=-1", "agent.params.actor_lr=-1"),
    ("agent.params.alpha_betas=[0.9]", "agent.params.alpha_betas=[0.9]"),
    ("agent.params.learnable_temperature=maybe", "learnable_temperature='maybe'"),
    ("agent.params.actor_update_frequency=0", "actor_update_frequency=0"),
    ("diag_gaussian_actor.params.hidden_dim=0", "diag_gaussian_actor.params.hidden_dim=0"),
    ("double_q_critic.params.hidden_depth=0", "double_q_critic.params.hidden_depth=0"),
    ("diag_gaussian_actor.params.log_std_bounds=[2,-5]", "log_std_bounds=[2, -5]"),
    ("large_batch=0", "large_batch=0"),
    ("num_eval_episodes=0", "num_eval_episodes=0"),
    ("hybrid_replay=maybe", "hybrid_replay='maybe'"),
    ("strict_device=maybe", "strict_device='maybe'"),
    ("resume=maybe", "resume='maybe'"),
    # OmegaConf alone would read these as true
    ("resume=1", "resume=1 is invalid: must be true or false"),
    ("save_video=yes", "save_video='yes' is invalid: must be true or false"),
    ("agent.params.learnable_temperature=2", "agent.params.learnable_temperature=2 is invalid: must be true or false"),
    ("replay_buffer_capacity=100", "must be >= agent.params.batch_size"),
    ("history_episodes=0", "history_episodes=0"),
    ("reward_schedule=3", "reward_schedule=3"),
    ("reward_source=maybe", "reward_source='maybe'"),
    ("reward_update=0", "reward_update=0"),
    ("eval_frequency=0", "eval_frequency=0"),
    ("topK=0", "topK=0"),
    ("reward_train_batch=0", "reward_train_batch=0"),
    ("data_aug_ratio=-1", "data_aug_ratio=-1"),
    ("method=surf threshold_u=0.3", "threshold_u=0.3"),
    ("method=rune rune_beta_decay=1.5", "rune_beta_decay=1.5"),
    ("method=rune ensemble_size=1", "needs ensemble_size >= 2"),
    ("run_tag=a/b", "run_tag='a/b'"),
    ("wandb_project=my/project", "wandb_project='my/project'"),
    ("wandb_entity=true", "wandb_entity=True"),
    ("seed=-1", "seed=-1"),
    ("agent.params.batch_size=64.0", "agent.params.batch_size=64.0"),
    ("teacher=replay", "labels_from=None is invalid: teacher=replay needs the labels.sqlite"),
    ("teacher=replay labels_from=no/such.sqlite", "labels_from='no/such.sqlite'"),
    ("teacher_type=person", "teacher_type='person'"),
    ("teacher=human human_mode=later", "human_mode='later'"),
    ("teacher=human human_port=-1", "human_port=-1"),
    ("teacher=human human_port=70000", "human_port=70000 is invalid: must be an integer in [0, 65535]"),
    # a key given twice (a sweep's `-- key=value` after the table's own) is reported with the value that counts
    ("num_unsup_steps=700 num_unsup_steps=1e3", "num_unsup_steps=1000.0 is invalid: must be an integer >= 0"),
    ("teacher=human human_timeout=0", "human_timeout=0"),
    ("teacher=human human_host=a/b", "human_host='a/b'"),
    ("teacher=human human_undo_window=-1", "human_undo_window=-1.0 is invalid: must be a number >= 0.0"),
    ("teacher=human human_instruction=true", "human_instruction=True is invalid: must be one line of text of at most"),
    (f"teacher=human human_instruction={'x' * 301}", "must be one line of text of at most 300 characters (quote it)"),
    ("method=sac_true teacher=human", "teacher_type='human' is invalid: allowed with reward_source=true: scripted"),
    ("method=policer policer_tau=-1", "policer_tau=-1"),
    ("method=policer policer_max_replay_ratio=0", "policer_max_replay_ratio=0"),
    ("method=ppe ppe_kappa=1.5", "ppe_kappa=1.5"),
    ("method=ppe ppe_epsilon=0", "ppe_epsilon=0"),
    ("query_scheme=ppe_mixture", "needs the ppe_morse feedback step"),
    ("feedback_steps=[train_reward,no_such_step]", "'no_such_step' is not a registered feedback step"),
    ("video_evals=every_0", "video_evals='every_0' is invalid: allowed: all, first_last, last, every_<k> (k >= 1)"),
    ("video_height=100", "video_height=100 is invalid: must be a multiple of 16 from 64 to 480"),
    ("video_width=1280", "video_width=1280 is invalid: must be a multiple of 16 from 64 to 640"),
    ("video_fps=0", "video_fps=0"),
    (
        "+preset=quick env=metaworld_drawer-open-v3",
        "preset_family='dmc' is invalid: +preset=quick is made for DeepMind "
        "Control tasks and env=metaworld_drawer-open-v3 is Meta-World; use +preset=quick_metaworld",
    ),
    (
        "+preset=quick_metaworld env=walker_walk",
        "preset_family='metaworld' is invalid: +preset=quick_metaworld is "
        "made for Meta-World tasks and env=walker_walk is DeepMind Control; use +preset=quick",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_bad_values_are_rejected_with_one_line_naming_them(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(*override.split())
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_multirun_job_refuses_a_boolean_key_given_as_1_in_one_line(tmp_path):
    """`-m` skips the command line's check up front; each job checks its own overrides before anything is written."""
    command = [sys.executable, "train_QPA.py", "-m", "env=walker_walk", "method=ppe", "ppe_extension=1",
               f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    (status,) = tmp_path.glob("walker_walk/*/*/status.json")
    message = "ppe_extension=1 is invalid: must be true or false"
    assert json.loads(status.read_text()) == {"state": "failed", "step": 0, "error": message}
    assert not list(status.parent.glob("*.csv")) and not (status.parent / "checkpoint.pt").exists()


# Runs `python train_QPA.py <args>` for each argument list on stdin (JSON), all through the script's own __main__
# path in one interpreter (a start per row would cost minutes), and prints, per row, the exit status the
# interpreter would give and what went to stderr. Building an environment counts as a failure: every bad value
# must be refused before that.
CLI_DRIVER = """
import contextlib, io, json, runpy, sys
import utils

def refuse_to_build(*args):
    raise AssertionError("an environment was built before the bad value was rejected")

utils.make_env = refuse_to_build
results = []
for args in json.load(sys.stdin):
    sys.argv = ["train_QPA.py", *args]
    stderr, status = io.StringIO(), 0
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path("train_QPA.py", run_name="__main__")
        except SystemExit as exit_:  # sys.exit("text") prints the text to stderr and exits with status 1
            code = exit_.code
            status = 0 if code is None else code if isinstance(code, int) else 1
            if isinstance(code, str):
                print(code, file=sys.stderr)
        except BaseException as error:
            status = 1
            print(f"Traceback (uncaught) {type(error).__name__}: {error}", file=sys.stderr)
    results.append({"status": status, "stderr": stderr.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_value_cli_results(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bad")
    rows = [[*override.split(), f"hydra.run.dir={root / str(i)}"] for i, (override, _) in enumerate(BAD_VALUES)]
    result = subprocess.run([sys.executable, "-c", CLI_DRIVER], input=json.dumps(rows), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    return {override: outcome for (override, _), outcome in zip(BAD_VALUES, outcomes, strict=True)}


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_cli_exits_with_one_line_for_every_bad_value_before_building_an_env(override, message, bad_value_cli_results):
    outcome = bad_value_cli_results[override]
    stderr = outcome["stderr"]
    assert outcome["status"] == 1, stderr[-2000:]
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr, stderr[-2000:]
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], stderr[-2000:]
    assert error_lines[0] == stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("max_feedbak=10", "max_feedbak is not a config key; did you mean max_feedback?"),
        ("teacher=bogus", "teacher='bogus' is invalid: allowed: equal, human, mistake, myopic, noisy, oracle, replay,"),
        ("method=pebbel", "did you mean method=pebble?"),
        ("+preset=bogus", "preset='bogus' is invalid: allowed: quick, quick_metaworld"),
        ("seed=[1", "the command line could not be read"),
        ("hydra.run.dir=/proc/qpa_run", "hydra.run.dir='/proc/qpa_run' is invalid"),
    ],
)
def test_hydra_composition_errors_are_one_line_with_the_closest_names(override, message):
    command = [sys.executable, "train_QPA.py", "num_threads=1", override]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line, result.stderr[-2000:]


def test_strict_cuda_without_gpu_is_rejected():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present, so strict cuda is valid here")
    with pytest.raises(ConfigError, match="strict_device=true"):
        load_config("device=cuda", "strict_device=true")


def test_the_paper_settings_pass_validation():
    load_config()
    load_config("env=metaworld_door-open-v3", "num_eval_episodes=100", "reward_update=200")


@pytest.mark.slow
def test_cli_rejects_bad_input_before_building_anything(tmp_path):
    result = train(tmp_path / "bad", "segment=5000", check=False)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: segment=5000 is invalid")
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()

    unknown = train(tmp_path / "bad2", "not_a_key=3", check=False)
    assert unknown.returncode != 0 and "not_a_key" in unknown.stderr


def test_feed_type_alias_follows_bpref_numbering():
    names = ["uniform", "disagreement", "entropy", "kcenter", "kcenter_disagree", "kcenter_entropy"]
    for feed_type, name in enumerate(names):
        assert load_config(f"feed_type={feed_type}").scheme == name
    assert load_config().scheme == "policy_aligned"


@pytest.mark.slow
def test_same_seed_gives_identical_logs(walker_run, tmp_path):
    again = tmp_path / "again"
    train(again, "env=walker_walk", *TINY)
    for name in ("eval.csv", "train.csv"):
        first = pd.read_csv(walker_run / name).drop(columns=TIME_COLUMNS, errors="ignore")
        second = pd.read_csv(again / name).drop(columns=TIME_COLUMNS, errors="ignore")
        pd.testing.assert_frame_equal(first, second)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result_without_duplicate_rows(walker_run, tmp_path):
    run_dir = tmp_path / "killed"
    command = [sys.executable, "train_QPA.py", "env=walker_walk", *TINY, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # The step-1000 checkpoint exists once eval.csv has its row; kill during the next episode.
    while time.time() < deadline and process.poll() is None:
        eval_csv = run_dir / "eval.csv"
        if eval_csv.exists() and eval_csv.read_text().count("\n") >= 3:
            time.sleep(1.0)
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed; give it more steps"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    result = train(run_dir, "env=walker_walk", *TINY)
    assert "resumed from" in result.stderr
    resumed = pd.read_csv(run_dir / "eval.csv")
    assert list(resumed.step) == [0, 1000, 2000]
    trains = pd.read_csv(run_dir / "train.csv")
    assert trains.step.is_unique
    reference = pd.read_csv(walker_run / "eval.csv")
    # Every RNG is checkpointed and episodes are seeded by index, so resuming changes nothing.
    pd.testing.assert_frame_equal(resumed, reference)

    finished = train(run_dir, "env=walker_walk", *TINY)
    assert "already finished" in finished.stderr


@pytest.mark.slow
def test_resume_with_a_different_config_is_refused_naming_the_keys(walker_run, tmp_path):
    result = train(walker_run, "env=walker_walk", *TINY, "max_feedback=30", "seed=7", check=False)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "refusing to resume" in message and "max_feedback" in message and "seed" in message


@pytest.mark.slow
def test_longer_budget_resumes_a_finished_run(walker_run, tmp_path):
    extended = tmp_path / "extended"
    train(extended, "env=walker_walk", *TINY)
    train(
        extended, "env=walker_walk", *[o for o in TINY if not o.startswith("num_train_steps")], "num_train_steps=3000"
    )
    evals = pd.read_csv(extended / "eval.csv")
    assert list(evals.step) == [0, 1000, 2000, 3000]


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "nan"
    result = train(run_dir, "env=walker_walk", *TINY, "agent.params.critic_lr=1e38", check=False)
    assert result.returncode != 0
    assert "non-finite" in result.stderr and "last good checkpoint" in result.stderr
    assert (run_dir / "checkpoint.pt").exists()
