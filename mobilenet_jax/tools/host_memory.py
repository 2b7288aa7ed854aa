"""How glibc hands memory to XLA:CPU and PyTorch: the page faults that slowed big batches on CPU.

An XLA:CPU executable allocates all its intermediate buffers as one block per call (2.68 GB for the
MobileNetV2 training step at batch 32, 224x224). glibc serves a block that large with a fresh `mmap`
and unmaps it on free, so every call page-faults the whole block in again, 4 KiB at a time. On this
project's 2-core VM that was 665k faults and 1.2-1.5 s of kernel time per V2 step (`getrusage`), and
now and then 8 s: memory given back to a VM's kernel is slow to get back.

`RETAIN_TUNABLES` keep freed memory in the process instead: one malloc arena (XLA's worker threads
would otherwise get arenas of at most 64 MiB, which fall back to `mmap` for such a block), no `mmap`
for large blocks, no trimming of the heap, and transparent huge pages (`madvise`) for what the heap
does take from the kernel. With them the V2 step page-faults once, on its first call, and then runs
with 0 faults and ~0.03 s of kernel time. The cost: a process keeps its peak memory until it exits.

glibc reads tunables only when a process starts, so `reexec_with_retained_memory` restarts a
command-line program with GLIBC_TUNABLES set, before it has done any work. It is process-wide: every
framework in the process gets it. (`mallopt` from Python comes too late for threads that already
have an arena and cannot set a trim threshold above 2 GiB.)
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional, Sequence

RETAIN_TUNABLES = (
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.trim_threshold=4611686018427387904",   # 2**62: never
    "glibc.malloc.hugetlb=1",                            # glibc >= 2.35; ignored before
)
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_REEXEC_MARK = "MOBILENET_JAX_REEXECUTED"


def transparent_hugepages() -> Optional[str]:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), None if unknown."""
  try:
    with open(_THP_ENABLED) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def glibc_tunables_supported() -> bool:
  """Linux with glibc >= 2.26, whose malloc reads GLIBC_TUNABLES."""
  library, version = platform.libc_ver()
  try:
    parsed = tuple(int(part) for part in version.split("."))
  except ValueError:
    return False
  return sys.platform.startswith("linux") and library == "glibc" and parsed >= (2, 26)


def _tunables(environ: Mapping[str, str]) -> list[str]:
  return [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]


def memory_retained(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether this process (or `environ`) has every one of RETAIN_TUNABLES in GLIBC_TUNABLES."""
  present = set(_tunables(os.environ if environ is None else environ))
  return all(t in present for t in RETAIN_TUNABLES)


def environment_with_retained_memory(environ: Optional[Mapping[str, str]] = None
                                     ) -> dict[str, str]:
  """A copy of `environ` with RETAIN_TUNABLES in GLIBC_TUNABLES; other tunables are kept."""
  env = dict(os.environ if environ is None else environ)
  names = {t.split("=", 1)[0] for t in RETAIN_TUNABLES}
  kept = [t for t in _tunables(env) if t.split("=", 1)[0] not in names]
  env["GLIBC_TUNABLES"] = ":".join(kept + list(RETAIN_TUNABLES))
  return env


def reexec_with_retained_memory(python_args: Sequence[str]) -> None:
  """Restarts `python *python_args` with RETAIN_TUNABLES; returns if that is not needed.

  `python_args` are what follows the interpreter on the command line that started this program:
  `["-m", "mobilenet_jax.tools.benchmark", *sys.argv[1:]]` for a module, `sys.argv` for a script.

  Returns without restarting where the tunables are already set, glibc is absent, or a restart
  has already been tried (no loops). Call it first thing in a command-line entry point, never from
  a library function or a notebook.
  """
  if memory_retained() or not glibc_tunables_supported() or os.environ.get(_REEXEC_MARK):
    return
  env = environment_with_retained_memory()
  env[_REEXEC_MARK] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *python_args], env)
