"""The one place that chooses how a network's conv units are computed: XLA's own ops or the XLA:CPU
kernels (`mobilenet_jax.xla_cpu`).

    create_model("mobilenet_v2", compute="auto")   # the XLA:CPU kernels on CPU, XLA's ops elsewhere
    create_model("mobilenet_v2", compute="xla")    # plain nn.Conv + norm + activation everywhere
    create_model("mobilenet_v2", compute="cpu")    # the XLA:CPU kernels on any backend

Both give the same variables and the same values (up to float summation order); only the speed
differs. The choice is made here once, when the model is created (`create_model`, the trainer) or
its inference program built (`inference_function`), and reaches the network as its `conv_norm_act`
factory; the research modules never look at the backend. The XLA:CPU room is imported only when it
is chosen. `run_once_compiler_options` is the backend's compile options for a program that runs once.
"""

from __future__ import annotations

from typing import Any, Optional

import jax

COMPUTE = ("auto", "xla", "cpu")


def resolve_compute(compute: str) -> str:
  """"xla" or "cpu" for a `compute` name: "auto" is "cpu" when JAX's default backend is the CPU,
  "xla" on GPUs and TPUs (which have native depthwise kernels)."""
  if not isinstance(compute, str) or compute not in COMPUTE:
    raise ValueError(f"compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
  if compute == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return compute


def conv_norm_act_for(compute: str) -> Optional[Any]:
  """The `conv_norm_act` factory of a network computed with `compute`: the XLA:CPU kernels' (their
  room imported now) for "cpu", None (the network's own plain `ConvNormAct`) for "xla"."""
  if resolve_compute(compute) == "xla":
    return None
  from mobilenet_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  return xla_cpu.conv_norm_act


def run_once_compiler_options() -> dict[str, Any]:
  """XLA options for a program that runs once (a network's initialisation): on CPU, XLA's loop
  emitters, which compile the init's many small elementwise programs (uniform -> normal -> scale)
  faster than its fusion emitters, with the same values (`experiments/startup_costs.py --studies
  init`); elsewhere XLA's defaults."""
  return {"xla_cpu_use_fusion_emitters": False} if jax.default_backend() == "cpu" else {}
