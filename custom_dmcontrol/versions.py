"""Warn when the installed mujoco / dm_control pair is not the one this project was checked with."""

from __future__ import annotations

import warnings
from importlib import metadata

# dm_control pins the mujoco it was built against; other pairs tend to fail at model compile or render time.
SUPPORTED_VERSIONS = {"mujoco": "3.3.0", "dm_control": "1.0.28"}


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def check_versions() -> bool:
    """True when the supported pair is installed; otherwise warn (naming both versions found) and return False."""
    found = {package: _installed_version(package) for package in SUPPORTED_VERSIONS}
    if found == SUPPORTED_VERSIONS:
        return True
    found_text = ", ".join(f"{package} {version}" for package, version in found.items())
    supported_text = ", ".join(f"{package}=={version}" for package, version in SUPPORTED_VERSIONS.items())
    warnings.warn(
        f"found {found_text}; this project supports only {supported_text} (other pairs are untested)",
        RuntimeWarning,
        stacklevel=2,
    )
    return False
