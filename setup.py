"""Install the QPA project (the Makefile does it, torch first):

pip install -e ./custom_dmcontrol -e ./custom_dmc2gym -e ".[dev]"
"""

from setuptools import setup

# Versions known to work together (checked 2026-11 on Python 3.11).
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
    "pandas==2.3.3",  # rliable 1.2 -> arch 7.2 does not import with pandas 3
    "matplotlib==3.11.2",
    "scipy==1.17.1",
    "rliable==1.2.0",
    "pillow==13.0.0",  # teacher=human: the segments' frames
    "imageio==2.38.2",  # save_video=true: mp4 encoding through its ffmpeg plugin,
    "imageio-ffmpeg==0.8.1",  # whose wheel carries an ffmpeg binary
    "starlette==1.7.0",  # teacher=human: the labelling page
    "uvicorn==0.54.0",
    # our own packages in this checkout: pip install -e ./custom_dmcontrol -e ./custom_dmc2gym -e ".[dev]"
    "custom_dmcontrol==0.1.0",
    "custom_dmc2gym==0.1.0",
]

setup(
    name="qpa",
    version="1.0.0",
    description="Reference implementation of QPA (Query-Policy Alignment) for preference-based RL",
    python_requires=">=3.10,<3.13",
    py_modules=[
        "train_QPA",
        "utils",
        "logger",
        "replay_buffer",
        "reward_model",
        "teacher",
        "plot",
        "config_schema",
        "run_dir",
        "queries",
        "human_teacher",
        "labelling_app",
        "video",
        "run_summary",
    ],
    packages=["agent", "methods"],
    install_requires=REQUIRES,
    extras_require={
        "dev": ["filelock==4.3.2", "pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6", "selenium==4.50.0"]
    },
)
