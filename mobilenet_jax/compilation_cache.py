"""JAX's persistent compilation cache, in the user's cache folder: compiled programs survive the process.

    import mobilenet_jax as mj
    mj.enable_compilation_cache()            # ~/.cache/mobilenet_jax/jax ($XDG_CACHE_HOME honoured)
    mj.enable_compilation_cache("/tmp/jax")  # or any folder; "" leaves the cache off

The main job, the benchmark and the ablation sweep switch it on by default (`config.compilation_cache`);
a second start of the same job then loads its training step instead of compiling it again.
"""

from __future__ import annotations

import os
from typing import Optional

import jax

# Programs that compiled faster than this are not written (reading them back would save little).
# Low enough to keep a MobileNet's init program (`init_variables`), which a warm start would
# otherwise compile again (docs/startup.md).
MIN_COMPILE_SECONDS = 0.1


def user_cache_dir() -> str:
  """`$XDG_CACHE_HOME/mobilenet_jax`, or `~/.cache/mobilenet_jax`: the project's cache folder."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mobilenet_jax")


def default_cache_dir() -> str:
  """`user_cache_dir()/jax`: compiled programs."""
  return os.path.join(user_cache_dir(), "jax")


def enable_compilation_cache(path: Optional[str] = None) -> Optional[str]:
  """Switches JAX's persistent compilation cache on at `path` (None: the folder JAX already has, e.g.
  from $JAX_COMPILATION_CACHE_DIR, else `default_cache_dir()`; "": off, leaving JAX's settings as
  they are). Returns the folder used, or None."""
  if path == "":
    return None
  if path is None and jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = os.path.expanduser(path) if path else default_cache_dir()
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
