"""The packages: `mobilenet_jax` and the training recipes of `configs/`, installed as
`mobilenet_jax.configs` (the folder stays at the repository root, as in the flax examples; a
top-level `configs` package in site-packages would clash with other projects' folders).

Everything else is in pyproject.toml: its `packages.find` cannot add a folder under another name.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["mobilenet_jax", "mobilenet_jax.*"]) + ["mobilenet_jax.configs"],
      package_dir={"mobilenet_jax.configs": "configs"})
