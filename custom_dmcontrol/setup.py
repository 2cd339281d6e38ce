from setuptools import setup

# This folder is the package itself, so `import custom_dmcontrol` finds the same code from the repository root
# whether or not it is installed (a nested copy would be shadowed there by this folder as a namespace package).
setup(
    name="custom_dmcontrol",
    version="0.1.0",
    description="Task-name resolution, headless rendering setup and version checks on top of upstream dm_control",
    packages=["custom_dmcontrol"],
    package_dir={"custom_dmcontrol": "."},
    python_requires=">=3.10",
    install_requires=["dm_control==1.0.28", "mujoco==3.3.0", "numpy<2.3"],
)
