"""experiments/benchmark_table.py: the README's Speed table and the JAX/PyTorch ratios from a JSON run."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import benchmark_table as bt  # noqa: E402


def _result(framework, mode, batch, seconds, **extra):
  return dict(model="mobilenet_v2", framework=framework, mode=mode, batch=batch, seconds=seconds,
              images_per_s=batch / sorted(seconds)[len(seconds) // 2], peak_fraction=0.25,
              latency_ms=1e3 * sorted(seconds)[len(seconds) // 2], compile_s=extra.get("compile_s"),
              peak_mb=extra.get("peak_mb"))


def test_table_rows_and_both_ratios():
  # Round 2 is slow for both frameworks (the machine's load): the per-round ratio ignores it.
  results = [_result("jax", "infer", 32, [0.2, 0.4, 0.2], compile_s=4.0, peak_mb=100.0),
             _result("torch", "infer", 32, [0.3, 0.6, 0.4])]
  rows = bt.table(results)
  assert rows[2] == "| V2 | **jax** | **160.0** |  |  | 4.0 /  | 100 /  | 25.0 /  |"
  assert rows[3].startswith("| V2 | torch | 80.0 |")
  (line,) = bt.speedups(results)
  assert "jax       infer    batch  32: 2.00x torch" in line   # medians 0.4 / 0.2
  assert "median of per-round ratios 1.50x" in line     # 1.5, 1.5, 2.0
