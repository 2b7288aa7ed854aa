"""The benchmark's report: the table of every measurement and JAX's speed-ups, and the machine."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Any, Optional, Sequence

import jax

from mobilenet_jax.tools.timing import Result, load_average


def _fmt(value: Optional[float], spec: str) -> str:
  return "-" if value is None else format(value, spec)


def print_table(results: list[Result], frameworks: Sequence[str]) -> None:
  """One block per (resolution, dtype): a row per model and framework, then JAX's speed-ups."""
  by_key = {(r.model, r.framework, r.mode, r.batch, r.resolution, r.dtype): r for r in results}
  configs = sorted({(r.resolution, r.dtype) for r in results})
  for resolution, dtype in configs:
    batches = sorted({r.batch for r in results if r.mode != "latency"
                      and (r.resolution, r.dtype) == (resolution, dtype)})
    models = list(dict.fromkeys(r.model for r in results))
    print(f"\n== {resolution}x{resolution}, {dtype} ==")
    width = max([10, *(len(f) + 1 for f in frameworks)])
    header = (f"{'model':<20}{'framework':<{width}}{'batch':>6}{'infer img/s':>13}{'train img/s':>13}"
              f"{'b1 ms':>9}{'compile s inf/train':>21}{'peak MB inf/train':>19}"
              f"{'% peak inf/train':>18}")
    print(header)
    print("-" * len(header))
    for model in models:
      for framework in frameworks:
        latency = by_key.get((model, framework, "latency", 1, resolution, dtype))
        for batch in batches:
          infer = by_key.get((model, framework, "infer", batch, resolution, dtype))
          train = by_key.get((model, framework, "train", batch, resolution, dtype))
          if not (infer or train or latency):
            continue
          get = lambda r, f: None if r is None else getattr(r, f)
          compile_s = f"{_fmt(get(infer, 'compile_s'), '.1f')}/{_fmt(get(train, 'compile_s'), '.1f')}"
          peak = f"{_fmt(get(infer, 'peak_mb'), '.0f')}/{_fmt(get(train, 'peak_mb'), '.0f')}"
          frac = (f"{_fmt(None if infer is None else 100 * infer.peak_fraction, '.1f')}/"
                  f"{_fmt(None if train is None else 100 * train.peak_fraction, '.1f')}")
          print(f"{model:<20}{framework:<{width}}{batch:>6}{_fmt(get(infer, 'images_per_s'), '.1f'):>13}"
                f"{_fmt(get(train, 'images_per_s'), '.1f'):>13}"
                f"{_fmt(get(latency, 'latency_ms'), '.1f'):>9}{compile_s:>21}{peak:>19}{frac:>18}")
    ours = [f for f in frameworks if f.startswith("jax")]
    others = [f for f in frameworks if not f.startswith("jax")]
    if not ours or not others:
      continue
    print("speed-up of JAX (>1: JAX faster; latency: their ms / JAX ms)")
    for model in models:
      for mine_name, other in ((m, o) for m in ours for o in others):
        cells = []
        for batch in batches:
          for mode in ("infer", "train"):
            mine = by_key.get((model, mine_name, mode, batch, resolution, dtype))
            theirs = by_key.get((model, other, mode, batch, resolution, dtype))
            if mine and theirs:
              cells.append(f"{mode} b{batch} {mine.images_per_s / theirs.images_per_s:.2f}x")
        mine = by_key.get((model, mine_name, "latency", 1, resolution, dtype))
        theirs = by_key.get((model, other, "latency", 1, resolution, dtype))
        if mine and theirs:
          cells.append(f"latency b1 {theirs.latency_ms / mine.latency_ms:.2f}x")
        if cells:
          print(f"  {model:<20} {mine_name:<9} vs {other:<6} " + ", ".join(cells))


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
  info = {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average_start": load_average()}
  try:
    with open("/proc/cpuinfo") as f:
      info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name")), "")
  except OSError:
    pass
  if "torch" in sys.modules:
    torch = sys.modules["torch"]
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_device=args.torch_device)
  if "keras" in sys.modules:
    info["keras"] = sys.modules["keras"].__version__
  return info
