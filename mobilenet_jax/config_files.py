"""Config files by path or by the name of a shipped recipe.

The recipes of the repository's `configs/` folder are installed as the package
`mobilenet_jax.configs`, so from any directory

    python -m mobilenet_jax.main --config=mobilenet_v2:width=0.75 --workdir=runs/v2

finds `configs/mobilenet_v2.py` (`mobilenet_v2.py` and `configs/mobilenet_v2.py` name it too). A file
that exists at the given path wins: your own recipe, or `configs/...` in a checkout. In Python:
`from mobilenet_jax.configs import mobilenet_v2; mobilenet_v2.get_config("width=0.75")`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from typing import Optional

import ml_collections
from absl import flags
from ml_collections import config_flags

PACKAGE = "mobilenet_jax.configs"
_HELPERS = ("__init__", "common")   # modules of the package that are not recipes


def shipped_directory() -> str:
  """The folder of the installed recipes (the repository's `configs/` in an editable install)."""
  if importlib.util.find_spec(PACKAGE) is None:
    raise ValueError(f"the package {PACKAGE} is not installed; install mobilenet_jax from its "
                     "repository: pip install -e .")
  return os.fspath(importlib.resources.files(PACKAGE))


def shipped_names() -> list[str]:
  """The recipes' names: `default`, `mobilenet_v2`, ..."""
  return sorted(name[:-3] for name in os.listdir(shipped_directory())
                if name.endswith(".py") and name[:-3] not in _HELPERS)


def resolve(spec: str) -> str:
  """`PATH[:ARG]` with PATH an existing file, or a shipped recipe's file for `NAME`, `NAME.py` or
  `configs/NAME.py`; ARG (after the first colon) is kept for the recipe's `get_config(arg)`."""
  path, colon, arg = spec.partition(":")
  if os.path.isfile(path):
    return spec
  folder, name = os.path.split(path[:-3] if path.endswith(".py") else path)
  if folder in ("", "configs") and name in shipped_names():
    return os.path.join(shipped_directory(), name + ".py") + colon + arg
  raise ValueError(f"config {path!r}: no such file and not a shipped recipe; pass a path to a "
                   f"config file or one of: {', '.join(shipped_names())}")


def load(spec: str) -> ml_collections.ConfigDict:
  """The `get_config(arg)` of `PATH[:ARG]` or `NAME[:ARG]` (see `resolve`), as `--config` loads it
  (no ARG: `get_config()`)."""
  path, colon, arg = resolve(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*([arg] if colon else []))


class _PathOrShippedName(flags.ArgumentParser):
  """Wraps ml_collections' config file parser: a shipped recipe's name resolves to its file."""

  def __init__(self, file_parser: flags.ArgumentParser):
    self._file_parser = file_parser

  def parse(self, argument):
    return self._file_parser.parse(resolve(argument))

  def flag_type(self):
    return self._file_parser.flag_type()


def define_config_flag(name: str = "config", default: Optional[str] = "default",
                       flag_values: flags.FlagValues = flags.FLAGS,
                       help_string: str = "Training config: a file or a shipped recipe's name, "
                       "optionally with an argument (mobilenet_v2:width=0.75)") -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file` whose value may also name a shipped recipe, with
  `--NAME.FIELD=VALUE` overrides as usual; the default is a recipe's name or a path."""
  holder = config_flags.DEFINE_config_file(
      name, resolve(default) if default else None, help_string, flag_values=flag_values,
      lock_config=True)
  flag = flag_values[name]
  flag.parser = _PathOrShippedName(flag.parser)
  return holder
