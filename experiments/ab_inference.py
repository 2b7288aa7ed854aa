"""CPU inference choices compared in one process: layouts (micro-batch size x micro-batches side by
side) and the folded network's fusion changes, each switched off alone.

    python experiments/ab_inference.py                                  # V1, V2, V3-L, V3-S
    python experiments/ab_inference.py --models v2 --layouts 8x1,8x2,4x2,16x2 --rounds 15
    python experiments/ab_inference.py --layouts 8x2 --changes pad_before_expansion,store_stem

Each layout `MxS` is `cpu_inference_function(model, variables, micro_batch=M, side_by_side=S)`
(`mobilenet_jax/xla_cpu/inference.py`):
batch 32, 224x224, float32, BatchNorm folded, a loop over steps of S independent micro-batches of M
images (`0x1` is the whole batch at once), printed with its speed against the first layout. Each
change in `--changes` adds the first layout without it, printed with the speed the change buys
(with / without):
  pad_before_expansion  ReLU6 blocks pad their input before the expansion
                        (`pad_before_expansion_min_size=0` turns it off)
  store_stem            the stem's output in a buffer of its own (`store_stem=False`)
  store_se_input        5x5 squeeze-and-excite inputs of 28x28 and more in buffers of their own
                        (`se_input_min_size=0`)
All variants of a model are compiled first, checked against the first one's logits, then timed in
alternation (median of `--rounds` calls each, the first two dropped); the speed-ups printed are
medians of per-round ratios to the first variant, so the machine's drift affects them little.
Restarts itself with host_memory.RETAIN_TUNABLES, as the benchmark does. The figures behind the
defaults of `cpu_inference_function`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Optional

from mobilenet_jax.tools import benchmark, host_memory, jax_runners, workload

MODELS = benchmark.MODELS  # the benchmark's keys: v1, v2, v3_large, v3_small
# Each change, and the option of cpu_inference_function that turns it off.
CHANGES = {"pad_before_expansion": {"pad_before_expansion_min_size": 0},
           "store_stem": {"store_stem": False},
           "store_se_input": {"se_input_min_size": 0}}


def parse_layout(text: str) -> tuple[int, int]:
  micro_batch, _, side_by_side = text.partition("x")
  if not (micro_batch.isdigit() and side_by_side.isdigit() and int(side_by_side) >= 1):
    raise argparse.ArgumentTypeError(f"{text!r}: expected MxS, e.g. 8x2 (0x1: the whole batch)")
  return int(micro_batch), int(side_by_side)


def compare(name: str, variants: dict[str, tuple[int, int, Optional[str]]], rounds: int,
            batch: int = 32, resolution: int = 224) -> dict[str, tuple[float, float]]:
  """Median seconds per call of each variant `label: (micro_batch, side_by_side, change off)`,
  and its speed relative to the first variant: the median over rounds of first time / its time."""
  import jax.numpy as jnp
  import numpy as np

  from mobilenet_jax import create_model
  from mobilenet_jax.xla_cpu.inference import cpu_inference_function

  model = create_model(name, num_classes=workload.NUM_CLASSES)
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (batch, resolution, resolution, 3), np.float32))
  variables = jax_runners.init_variables(model, resolution)
  compiled = {}
  for label, (micro_batch, side_by_side, off) in variants.items():
    predict, folded = cpu_inference_function(model, variables, micro_batch=micro_batch,
                                             side_by_side=side_by_side, **CHANGES.get(off, {}))
    compiled[label] = (predict.lower(folded, images).compile(), folded)
  reference = None
  for label, (function, folded) in compiled.items():
    logits = np.asarray(function(folded, images))
    if reference is None:
      reference = logits
    scale = float(np.abs(reference).max())
    assert float(np.abs(logits - reference).max()) <= 1e-4 * scale, f"{label}: different logits"
  times = {label: [] for label in compiled}
  for _ in range(rounds):
    for label, (function, folded) in compiled.items():
      time.sleep(0.05)  # let the previous call's threads go idle
      start = time.perf_counter()
      function(folded, images).block_until_ready()
      times[label].append(time.perf_counter() - start)
  first = times[next(iter(times))]
  # Each variant against the first, per round: adjacent calls share the machine's load.
  return {label: (statistics.median(t[2:] if len(t) > 4 else t),
                  statistics.median(a / b for a, b in zip(first, t)))
          for label, t in times.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
  parser.add_argument("--layouts", default="8x1,8x2",
                      help="comma list of MxS: micro-batch M, S of them side by side")
  parser.add_argument("--changes", default="", help=f"comma list of {list(CHANGES)}")
  parser.add_argument("--rounds", type=int, default=13, help="timed calls per variant")
  args = parser.parse_args(argv)
  layouts = [parse_layout(t) for t in args.layouts.split(",")]
  changes = [c for c in args.changes.split(",") if c]
  for change in changes:
    if change not in CHANGES:
      parser.error(f"unknown change {change!r}; choose from {list(CHANGES)}")
  variants = {f"{m}x{s}": (m, s, None) for m, s in layouts}
  first = next(iter(variants))
  variants.update({f"{first} without {c}": (*layouts[0], c) for c in changes})
  for key in args.models.split(","):
    if key not in MODELS:
      parser.error(f"unknown model {key!r}; choose from {list(MODELS)}")
    medians = compare(MODELS[key], variants, args.rounds)
    # A layout: its speed against the first layout; a change: the first layout's speed with the
    # change against without it.
    print(f"{MODELS[key]:20s}" + "  ".join(
        f"{label}: {1e3 * t:6.1f} ms ({speed:.2f}x)" if variants[label][2] is None else
        f"{label}: {1e3 * t:6.1f} ms ({variants[label][2]} buys {1 / speed:.2f}x)"
        for label, (t, speed) in medians.items()), flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_retained_memory(sys.argv)
  main()
