"""The README's Speed table, and JAX's speed against PyTorch, from a benchmark JSON file.

    python experiments/benchmark_table.py experiments/benchmark_results/cpu_f32_b32.json

Prints the markdown table of the README (one row per model and framework: batch-32 inference and
training images/s, batch-1 latency, compile times, peak memory, fraction of the matmul peak), then for
each model and mode JAX's speed against PyTorch two ways: the ratio of the medians (the benchmark's
own figure) and the median of the per-round ratios (the benchmark times the frameworks in
interleaved rounds, so the calls of one round share the machine's load).
"""

from __future__ import annotations

import argparse
import json
import statistics

NAMES = {"mobilenet_v1": "V1", "mobilenet_v2": "V2", "mobilenet_v3_large": "V3-Large",
         "mobilenet_v3_small": "V3-Small"}


def _fmt(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def table(results: list[dict], batch: int = 32) -> list[str]:
  by_key = {(r["model"], r["framework"], r["mode"], r["batch"]): r for r in results}
  models = list(dict.fromkeys(r["model"] for r in results))
  frameworks = list(dict.fromkeys(r["framework"] for r in results))
  lines = ["| model | framework | infer img/s (b32) | train img/s (b32) | latency b1 ms | "
           "compile s infer/train | peak MB infer/train | % of matmul peak infer/train |",
           "|---|---|---|---|---|---|---|---|"]
  for model in models:
    for framework in frameworks:
      infer = by_key.get((model, framework, "infer", batch))
      train = by_key.get((model, framework, "train", batch))
      latency = by_key.get((model, framework, "latency", 1))
      get = lambda r, field: None if r is None else r[field]
      ours = framework.startswith("jax")
      bold = lambda text: f"**{text}**" if ours and text else text
      cells = [bold(_fmt(get(infer, "images_per_s"), ".1f")),
               bold(_fmt(get(train, "images_per_s"), ".1f")),
               bold(_fmt(get(latency, "latency_ms"), ".1f"))]
      compile_s = (f"{_fmt(get(infer, 'compile_s'), '.1f')} / {_fmt(get(train, 'compile_s'), '.1f')}"
                   if ours else "")
      peak = (f"{_fmt(get(infer, 'peak_mb'), '.0f')} / {_fmt(get(train, 'peak_mb'), '.0f')}"
              if ours else "")
      percent = lambda r: None if r is None else 100 * r["peak_fraction"]
      fraction = f"{_fmt(percent(infer), '.1f')} / {_fmt(percent(train), '.1f')}"
      lines.append(f"| {NAMES.get(model, model)} | {bold(framework)}"
                   f" | {' | '.join(cells)} | {compile_s} | {peak} | {fraction} |")
  return lines


def speedups(results: list[dict], other: str = "torch") -> list[str]:
  by_key = {(r["model"], r["framework"], r["mode"], r["batch"]): r for r in results}
  lines = []
  for (model, framework, mode, batch), mine in by_key.items():
    theirs = by_key.get((model, other, mode, batch))
    if not framework.startswith("jax") or theirs is None:
      continue
    of_medians = statistics.median(theirs["seconds"]) / statistics.median(mine["seconds"])
    per_round = statistics.median(t / j for j, t in zip(mine["seconds"], theirs["seconds"]))
    lines.append(f"{NAMES.get(model, model):9s} {framework:9s} {mode:8s} batch {batch:3d}: "
                 f"{of_medians:.2f}x "
                 f"{other} (median of per-round ratios {per_round:.2f}x, "
                 f"{len(mine['seconds'])} rounds)")
  return lines


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("json_file")
  args = parser.parse_args(argv)
  with open(args.json_file) as f:
    run = json.load(f)
  print(f"`{run['command']}`; matmul peak "
        f"{run['machine']['matmul_peak_gflops']['float32']:.0f} GFLOP/s (f32)\n")
  print("\n".join(table(run["results"])))
  print()
  print("\n".join(speedups(run["results"])))


if __name__ == "__main__":
  main()
