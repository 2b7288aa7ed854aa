"""CPU inference layouts compared in one process: micro-batch size x micro-batches side by side.

    python experiments/ab_inference.py                                  # V1, V2, V3-L, V3-S
    python experiments/ab_inference.py --models v2 --layouts 8x1,8x2,4x2,16x2 --rounds 15

Each layout `MxS` is `fold.inference_function(model, variables, micro_batch=M, side_by_side=S)`:
batch 32, 224x224, float32, BatchNorm folded, a loop over steps of S independent micro-batches of M
images (`0x1` is the whole batch at once). All layouts of a model are compiled first, checked against
the whole-batch logits, then timed in alternation (median of `--rounds` calls each, the first two
dropped), so the machine's drift affects them alike. Restarts itself with host_memory.RETAIN_TUNABLES,
as the benchmark does. The figures behind `fold.CPU_MICRO_BATCH` and `fold.CPU_SIDE_BY_SIDE`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from mobilenet_jax import benchmark, host_memory

MODELS = benchmark.MODELS  # the benchmark's keys: v1, v2, v3_large, v3_small


def parse_layout(text: str) -> tuple[int, int]:
  micro_batch, _, side_by_side = text.partition("x")
  if not (micro_batch.isdigit() and side_by_side.isdigit() and int(side_by_side) >= 1):
    raise argparse.ArgumentTypeError(f"{text!r}: expected MxS, e.g. 8x2 (0x1: the whole batch)")
  return int(micro_batch), int(side_by_side)


def compare(name: str, layouts: list[tuple[int, int]], rounds: int, batch: int = 32,
            resolution: int = 224) -> dict[tuple[int, int], float]:
  """Median seconds per call of each layout, timed in alternation."""
  import jax.numpy as jnp
  import numpy as np

  from mobilenet_jax import create_model
  from mobilenet_jax.models.fold import inference_function

  model = create_model(name, num_classes=benchmark.NUM_CLASSES)
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (batch, resolution, resolution, 3), np.float32))
  variables = benchmark.init_variables(model, resolution)
  compiled = {}
  for micro_batch, side_by_side in layouts:
    predict, folded = inference_function(model, variables, micro_batch=micro_batch,
                                         side_by_side=side_by_side)
    compiled[micro_batch, side_by_side] = (predict.lower(folded, images).compile(), folded)
  reference = None
  for layout, (function, folded) in compiled.items():
    logits = np.asarray(function(folded, images))
    if reference is None:
      reference = logits
    scale = float(np.abs(reference).max())
    assert float(np.abs(logits - reference).max()) <= 1e-4 * scale, f"{layout}: different logits"
  times = {layout: [] for layout in compiled}
  for _ in range(rounds):
    for layout, (function, folded) in compiled.items():
      time.sleep(0.05)  # let the previous call's threads go idle
      start = time.perf_counter()
      function(folded, images).block_until_ready()
      times[layout].append(time.perf_counter() - start)
  return {layout: statistics.median(t[2:] if len(t) > 4 else t) for layout, t in times.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
  parser.add_argument("--layouts", default="8x1,8x2",
                      help="comma list of MxS: micro-batch M, S of them side by side")
  parser.add_argument("--rounds", type=int, default=13, help="timed calls per layout")
  args = parser.parse_args(argv)
  layouts = [parse_layout(t) for t in args.layouts.split(",")]
  for key in args.models.split(","):
    if key not in MODELS:
      parser.error(f"unknown model {key!r}; choose from {list(MODELS)}")
    medians = compare(MODELS[key], layouts, args.rounds)
    first = medians[layouts[0]]
    print(f"{MODELS[key]:20s}" + "  ".join(
        f"{m}x{s}: {1e3 * t:6.1f} ms ({first / t:.2f}x)" for (m, s), t in medians.items()),
        flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_retained_memory(sys.argv)
  main()
