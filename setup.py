"""Install the QPA project: `pip install -e ".[dev]"` (the Makefile does it, torch first)."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent

# Versions known to work together (SPEC §7, checked 2026-11 on Python 3.11).
REQUIRES = [
    "torch==2.13.0",
    "numpy==2.2.6",
    "mujoco==3.3.0",
    "dm_control==1.0.28",
    "metaworld==3.1.1",
    "gymnasium==1.4.0",
    "hydra-core==1.3.2",
    "omegaconf==2.3.1",
    "hydra-joblib-launcher==1.2.0",
    "hydra-submitit-launcher==1.2.0",
    "wandb==0.31.0",
    "tensorboard==2.21.0",
    "termcolor==3.3.0",
    "tqdm==4.70.1",
    "pandas==3.1.1",
    "matplotlib==3.11.2",
    "scipy==1.17.1",
    "rliable==1.2.0",
    # our own packages, installed from this checkout
    f"custom_dmcontrol @ {(HERE / 'custom_dmcontrol').as_uri()}",
    f"custom_dmc2gym @ {(HERE / 'custom_dmc2gym').as_uri()}",
]

setup(
    name="qpa",
    version="1.0.0",
    description="Reference implementation of QPA (Query-Policy Alignment) for preference-based RL",
    python_requires=">=3.10,<3.13",
    py_modules=["train_QPA", "utils", "logger", "replay_buffer", "reward_model", "teacher", "plot", "config_check"],
    packages=["agent"],
    install_requires=REQUIRES,
    extras_require={"dev": ["pytest==9.2.0", "ruff==0.17.6"]},
)
