"""XLA:CPU compile options for programs that run once (a network's initialisation)."""

from __future__ import annotations

from typing import Any

import jax


def run_once_compiler_options() -> dict[str, Any]:
  """On CPU, XLA's loop emitters, which compile the init's ~60 small elementwise programs
  (uniform -> normal -> scale) faster than its MLIR fusion emitters, with the same values
  (`experiments/startup_costs.py --studies init`); elsewhere XLA's defaults."""
  return {"xla_cpu_use_fusion_emitters": False} if jax.default_backend() == "cpu" else {}
