"""The XLA:CPU kernels: MobileNet's layers in the forms XLA:CPU runs fastest, as layer factories.

XLA:CPU runs a grouped convolution one group at a time, sends convolutions to a generic kernel but
dots to its tuned GEMM, and fuses cheap element-wise producers into each of their consumers (so a
tensor read by several passes is recomputed in each). What this room gives instead, each equal to
XLA's own ops up to float summation order (tests/test_xla_cpu_kernels.py):

- `conv.conv_general_dilated`: depthwise convolutions as k*k shifted multiply-adds with a gradient
  of the same form (`depthwise.py`), 1x1 convolutions as matmuls, the 3-channel stem as broadcast
  multiply-adds; a drop-in for `nn.Conv(conv_general_dilated=...)`.
- `norm_activation.fused_norm_activation`: BatchNorm and its activation with a fused gradient.
- `fusion_barrier.materialized`: a tensor computed once into a buffer of its own.
- `inference.cpu_inference_function`: the folded network's inference program for XLA:CPU.

`conv_norm_act` is the `ConvNormAct` factory that `mobilenet_jax/compute.py` hands the network when
its compute is "cpu" (this room imports the models, never the reverse); `make_conv_norm_act` builds
it with single optimisations off, for A/B runs.
"""

from __future__ import annotations

import functools

from flax import linen as nn

from mobilenet_jax.models.layers import ConvNormAct, ModuleDef, norm_then_activation
from mobilenet_jax.xla_cpu.conv import conv_general_dilated
from mobilenet_jax.xla_cpu.norm_activation import fused_norm_activation


def make_conv_norm_act(fused_batch_norm: bool = True, materialized_gradient: bool = True
                       ) -> ModuleDef:
  """`ConvNormAct` with the CPU convolutions and, unless turned off, the fused BatchNorm gradient
  and the depthwise backward's materialised output gradient; same variables either way."""
  conv = functools.partial(nn.Conv, conv_general_dilated=functools.partial(
      conv_general_dilated, materialize_gradient=materialized_gradient))
  norm_act = fused_norm_activation if fused_batch_norm else norm_then_activation
  return functools.partial(ConvNormAct, conv=conv, norm_act=norm_act)


conv_norm_act = make_conv_norm_act()
