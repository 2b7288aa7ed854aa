"""The project's folder in the user's cache: `$XDG_CACHE_HOME/mobilenet_jax` (`~/.cache/...`).

Compiled programs (`compilation_cache`) and extracted dataset archives (`data/archive`) live under it.
"""

from __future__ import annotations

import os


def user_cache_dir() -> str:
  """`$XDG_CACHE_HOME/mobilenet_jax`, or `~/.cache/mobilenet_jax`: the project's cache folder."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mobilenet_jax")
