from setuptools import setup

# custom_dmcontrol is the sibling folder of this one: install both in one pip command,
# `pip install -e ./custom_dmcontrol -e ./custom_dmc2gym`, so pip takes it from there.
setup(
    name="custom_dmc2gym",
    version="0.1.0",
    description="Gymnasium API for DeepMind Control Suite tasks with the dmc2gym calling convention",
    packages=["dmc2gym"],
    python_requires=">=3.10",
    install_requires=["custom_dmcontrol", "gymnasium>=1.0,<2", "numpy<2.3"],
)
