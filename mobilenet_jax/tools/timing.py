"""Timing for the benchmark: one prepared step per framework (`Runner`), one measurement (`Result`),
timed calls, and the matmul peak that model FLOP/s are compared with."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Runner:
  """One framework's prepared step: `step()` runs it once and waits for the result."""
  step: Callable[[], Any]
  compile_s: Optional[float] = None     # JAX: lower + compile; others: first call minus a timed one
  peak_bytes: Optional[int] = None      # compiled program's memory (JAX) or CUDA peak (torch)
  xla_flops: Optional[float] = None     # XLA's own count for the step, for reference
  note: str = ""


@dataclasses.dataclass
class Result:
  """One (model, framework, mode, batch, resolution, dtype) measurement."""
  model: str
  framework: str
  mode: str
  batch: int
  resolution: int
  dtype: str
  seconds: list[float]
  images_per_s: float
  latency_ms: float
  compile_s: Optional[float]
  peak_mb: Optional[float]
  model_gflops: float                   # per step, from the papers' MAdds (x2 FLOPs, x3 training)
  peak_fraction: float                  # achieved model FLOP/s over the measured matmul peak
  xla_gflops: Optional[float] = None
  note: str = ""


def load_average() -> Optional[float]:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def time_calls(step: Callable[[], Any], count: int) -> list[float]:
  times = []
  for _ in range(count):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def measure_matmul_peak(dtype: str, size: int, repeats: int) -> float:
  """FLOP/s of a `size`x`size` matmul through XLA on the default device (the roofline's ceiling)."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(jnp.matmul).lower(a, a).compile()
  f(a, a).block_until_ready()
  # The best call, not the median: a ceiling, and load from other processes only lowers it.
  return 2 * size**3 / min(time_calls(lambda: f(a, a).block_until_ready(), repeats))


def measure_torch_matmul_peak(dtype: str, size: int, repeats: int, device: str) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  a = torch.ones(size, size, dtype=getattr(torch, dtype), device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step():
    torch.matmul(a, a)
    sync()
  step()
  return 2 * size**3 / min(time_calls(step, repeats))
