#!/usr/bin/env python3
"""Pack the Python packages a training run needs that the lent GPU machines lack, for their Python 3.12.

    .venv/bin/python scripts/gpu_site.py          # here, once per checkout: writes exp/gpu_site/site.tgz

The GPU machines' image has torch, numpy, scipy, pandas, lxml, absl, pytest and more, but not hydra, omegaconf,
MuJoCo, dm_control, Gymnasium or the labelling page's Starlette and uvicorn, and it cannot reach a package registry.
This copies those packages (with their metadata) at the versions installed in the virtual environment that runs
this script, which are the pinned ones: they are pure Python, except MuJoCo, whose wheel for CPython 3.12 is
downloaded (pip, one file). dm_control leaves out its locomotion and manipulation packages and the dog's meshes,
which no task here uses and which would take the archive over the 64 MiB a device call carries. A device command
then unpacks it before anything else (docs/PERFORMANCE.md, "On one GPU"):

    mkdir -p /tmp/site && tar -xzf exp/gpu_site/site.tgz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD/custom_dmc2gym
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PURE_PYTHON = [  # imported by train_QPA.py, the tests and the report, and missing from the GPU image
    "hydra-core", "omegaconf", "antlr4-python3-runtime", "gymnasium", "Farama-Notifications", "dm_control", "dm-env",
    "glfw", "PyOpenGL", "termcolor", "starlette", "uvicorn", "sniffio",
]  # fmt: skip
LEFT_OUT = ("dm_control/locomotion/", "dm_control/manipulation/", "dm_control/suite/dog_assets/")
MUJOCO_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def copy_distribution(name: str, site: Path) -> int:
    """Copy an installed distribution's files (its RECORD) into `site`, bytecode and LEFT_OUT aside; bytes copied."""
    distribution = importlib.metadata.distribution(name)
    copied = 0
    for file in distribution.files or []:
        relative = file.as_posix()
        if relative.startswith("..") or "__pycache__" in relative or relative.startswith(LEFT_OUT):
            continue
        source = Path(str(file.locate()))
        if source.is_file():
            target = site / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied += source.stat().st_size
    return copied


def add_mujoco(site: Path, downloads: Path) -> str:
    """Unpack MuJoCo's CPython 3.12 wheel, at the installed version, into `site`; its file name."""
    version = importlib.metadata.version("mujoco")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", "-d", str(downloads), f"mujoco=={version}"]  # fmt: skip
    for platform in MUJOCO_PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command, check=True)
    (wheel,) = downloads.glob("mujoco-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return wheel.name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "exp" / "gpu_site" / "site.tgz")
    out = parser.parse_args().out
    with tempfile.TemporaryDirectory() as scratch:
        site = Path(scratch) / "site"
        sizes = {name: copy_distribution(name, site) for name in PURE_PYTHON}
        wheel = add_mujoco(site, Path(scratch) / "downloads")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz") as archive:
            for path in sorted(site.iterdir()):
                archive.add(path, arcname=path.name)
    listed = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in sizes)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB: {listed}, and {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
