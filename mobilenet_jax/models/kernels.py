"""The one place that chooses how a network's layers are computed: XLA's own ops or the XLA:CPU kernels.

    create_model("mobilenet_v2", kernels="auto")   # the CPU kernels on CPU, XLA's ops elsewhere
    create_model("mobilenet_v2", kernels="xla")    # plain nn.Conv + norm + activation everywhere
    create_model("mobilenet_v2", kernels="cpu")    # models/xla_cpu on any backend

Both give the same variables and the same values (up to float summation order); only the speed
differs. The choice reaches every block as one `ConvNormAct` factory; `kernels` may also be such a
factory itself (e.g. `xla_cpu.make_conv_norm_act(fused_batch_norm=False)` for an A/B run).
"""

from __future__ import annotations

from typing import Union

import jax

from mobilenet_jax.models import xla_cpu
from mobilenet_jax.models.layers import ConvNormAct, ModuleDef

KERNELS = ("auto", "xla", "cpu")
Kernels = Union[str, ModuleDef]


def resolve_kernels(kernels: Kernels) -> Kernels:
  """"xla" or "cpu" for a name ("auto" is "cpu" when the default backend is the CPU, "xla" on GPUs
  and TPUs, which have native depthwise kernels); a `ConvNormAct` factory is returned as it is."""
  if not isinstance(kernels, str):
    if not callable(kernels):
      raise ValueError(f"kernels must be one of {KERNELS} or a ConvNormAct factory, got {kernels!r}")
    return kernels
  if kernels not in KERNELS:
    raise ValueError(f"kernels must be one of {KERNELS} or a ConvNormAct factory, got {kernels!r}")
  if kernels == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return kernels


def conv_norm_act(kernels: Kernels) -> ModuleDef:
  """The `ConvNormAct` factory of a network built with `kernels`."""
  resolved = resolve_kernels(kernels)
  if not isinstance(resolved, str):
    return resolved
  return xla_cpu.conv_norm_act if resolved == "cpu" else ConvNormAct
