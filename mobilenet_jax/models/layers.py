"""Layers shared by every MobileNet: channel rounding, padding, conv+norm+act, depthwise conv, SE.

Imports only jax and flax, so the model code can be dropped into any Flax project.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array
ModuleDef = Any
Activation = Callable[[Array], Array]

PADDING_MODES = ("same", "symmetric")
DEPTHWISE_IMPLS = ("auto", "xla", "shifted")

# He-normal on fan-out (torchvision/timm MobileNet init; V1/V2 papers do not specify one).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Classifier init of torchvision MobileNetV2/V3: normal(0, 0.01), zero bias.
classifier_kernel_init = nn.initializers.normal(0.01)

ACTIVATIONS: dict[str, Activation] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hard_swish": jax.nn.hard_swish,
    "identity": lambda x: x,
}


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
  """Round a channel count to the nearest multiple of `divisor`, never going down by more than 10%.

  The rule of the TF-slim MobileNet code, copied by every reference library (Keras `_depth`,
  torchvision `_make_divisible`, timm `make_divisible`); see ANCHORS-models.md section 2.1.
  """
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return int(rounded)


def padding_for(size: int, kernel_size: int, stride: int, mode: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis.

  "same": TensorFlow/Keras SAME, the extra pixel of an even input at stride 2 goes after (bottom/right).
  "symmetric": PyTorch's `(k - 1) // 2` on both sides (torchvision, timm non-`tf_` weights).
  The two agree at stride 1 and odd kernels; ported weights need the matching one.
  """
  if mode == "symmetric":
    pad = (kernel_size - 1) // 2
    return pad, pad
  if mode == "same":
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
  raise ValueError(f"padding must be one of {PADDING_MODES}, got {mode!r}")


def _spatial_padding(x: Array, kernel_size: int, stride: int, mode: str) -> list[tuple[int, int]]:
  return [padding_for(x.shape[1], kernel_size, stride, mode),
          padding_for(x.shape[2], kernel_size, stride, mode)]


def bind_norm(norm: ModuleDef, train: bool) -> ModuleDef:
  """Binds `use_running_average=not train` into a BatchNorm factory that has not set it yet.

  Other norm factories (GroupNorm, LayerNorm, ...) are returned unchanged, so blocks accept any
  normalisation while the `train` flag keeps its usual Flax meaning for BatchNorm.
  """
  target, keywords = norm, {}
  while isinstance(target, functools.partial):
    keywords = {**target.keywords, **keywords}
    target = target.func
  if (isinstance(target, type) and issubclass(target, nn.BatchNorm)
      and keywords.get("use_running_average") is None):
    return functools.partial(norm, use_running_average=not train)
  return norm


def resolve_depthwise_impl(impl: str) -> str:
  """'auto' picks the fastest depthwise implementation for the default backend.

  XLA:CPU runs a grouped convolution one group at a time (about 10x slower than nine shifted
  multiply-adds on a 3x3 layer, see ANCHORS-speed.md); GPUs and TPUs have native depthwise kernels.
  """
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
  if impl == "auto":
    return "shifted" if jax.default_backend() == "cpu" else "xla"
  return impl


def depthwise_conv(x: Array, kernel: Array, stride: int,
                   padding: Sequence[tuple[int, int]], impl: str = "xla") -> Array:
  """Depthwise 2-D convolution of NHWC `x` with a `[k, k, 1, C]` kernel (Flax grouped layout).

  impl="xla": `lax.conv_general_dilated` with `feature_group_count=C`.
  impl="shifted": the same sum written as k*k strided slices times a per-channel weight, which XLA
  fuses into one loop nest; equal to the grouped convolution up to float summation order.
  """
  channels = x.shape[-1]
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=list(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
  if impl != "shifted":
    raise ValueError(f"unknown depthwise impl {impl!r}")
  kh, kw = kernel.shape[0], kernel.shape[1]
  x = jnp.pad(x, [(0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)])
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(x, (0, i, j, 0),
                          (x.shape[0], i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1,
                           channels), (1, stride, stride, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """Depthwise kxk convolution (one filter per channel, V1 paper section 3.1), no bias.

  Its parameter `kernel` has Flax's grouped-conv layout `[k, k, 1, C]`, whatever `impl` computes it.
  """
  kernel_size: int = 3
  strides: int = 1
  padding: str = "same"
  impl: str = "auto"
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = conv_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, 1, channels), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    pads = _spatial_padding(x, self.kernel_size, self.strides, self.padding)
    return depthwise_conv(x, kernel, self.strides, pads, resolve_depthwise_impl(self.impl))


class ConvNormAct(nn.Module):
  """Convolution (no bias), normalisation, optional activation: the unit every MobileNet is built of.

  `norm` is a factory (e.g. `functools.partial(nn.BatchNorm, use_running_average=not train)`), so
  BatchNorm can be swapped for another normalisation. `activation=None` is linear (V2 projection).
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  norm: ModuleDef = nn.BatchNorm
  activation: Optional[Activation] = jax.nn.relu6
  padding: str = "same"
  depthwise_impl: str = "auto"
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.depthwise:
      if self.features != x.shape[-1]:
        raise ValueError(f"a depthwise conv keeps the channel count: in {x.shape[-1]}, "
                         f"asked for {self.features}")
      x = DepthwiseConv(self.kernel_size, self.strides, self.padding, self.depthwise_impl,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    else:
      pads = _spatial_padding(x, self.kernel_size, self.strides, self.padding)
      x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), self.strides, padding=pads,
                  use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                  kernel_init=conv_kernel_init, name="conv")(x)
    x = self.norm(name="norm")(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


class SqueezeExcite(nn.Module):
  """Squeeze-and-excite as used by MobileNetV3 (V3 paper section 5.3, Figure 4).

  Global average pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias), hard-sigmoid gate.
  The reduced width is `make_divisible(channels * se_ratio, 8)` of the block's *expanded* channels,
  as in every V3 reference (ANCHORS-models.md section 2.3). 1x1 convs on a 1x1 map are Dense layers.
  """
  reduced_features: Optional[int] = None
  se_ratio: float = 0.25
  divisor: int = 8
  activation: Activation = jax.nn.relu
  gate: Activation = jax.nn.hard_sigmoid
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    reduced = self.reduced_features or make_divisible(channels * self.se_ratio, self.divisor)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    # The mean is taken in float32 so a bf16 network pools accurately.
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    s = self.activation(dense(reduced, name="reduce")(s))
    s = self.gate(dense(channels, name="expand")(s))
    return x * s.astype(x.dtype)


def global_average_pool(x: Array) -> Array:
  """Mean over H and W, computed in float32 and returned in the input dtype."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
