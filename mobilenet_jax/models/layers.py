"""Layers shared by every MobileNet: channel rounding, padding, conv + norm + activation, SE.

Plain Flax Linen, importable into any Flax project. How a convolution or a norm is computed is the
caller's choice, passed in as layer factories (`conv=`, `norm=`, `norm_act=`) as flax's examples do;
`mobilenet_jax/compute.py` chooses the network's conv unit factory once, outside these modules.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array
ModuleDef = Any
Activation = Callable[[Array], Array]
# (norm factory, activation or None) -> a function that normalises then activates, creating its
# layers in the calling module under the name "norm".
NormAct = Callable[[ModuleDef, Optional[Activation]], Callable[[Array], Array]]

# "same": TF/Keras; "symmetric": PyTorch; "keras": Keras applications' MobileNet (V1), see
# `spatial_padding`.
PADDING_MODES = ("same", "symmetric", "keras")

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

  The rule of the TF-slim MobileNet code, kept by every reference library (Keras `_depth`,
  torchvision `_make_divisible`, timm `make_divisible`).
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
  "keras" is SAME here; see `spatial_padding` for where it differs.
  """
  if mode == "symmetric":
    pad = (kernel_size - 1) // 2
    return pad, pad
  if mode in ("same", "keras"):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
  raise ValueError(f"padding must be one of {PADDING_MODES}, got {mode!r}")


def spatial_padding(x: Array, kernel_size: int, stride: int, mode: str, depthwise: bool = False
                    ) -> list[tuple[int, int]]:
  """(before, after) padding of the H and W axes of NHWC `x` for a kxk convolution.

  "keras" differs from "same" at strided depthwise convolutions: Keras applications' MobileNet (V1)
  pads them with ZeroPadding2D(((0, 1), (0, 1))) and then takes 'valid', (0, k - 2) for its k = 3,
  which equals SAME only at even sizes.
  """
  if mode == "keras" and depthwise and stride > 1:
    return [(0, kernel_size - 2)] * 2
  return [padding_for(x.shape[1], kernel_size, stride, mode),
          padding_for(x.shape[2], kernel_size, stride, mode)]


def unwrap_partial(factory: Any) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
  """(callable, positional args, keywords) of a possibly nested `functools.partial`."""
  target, args, keywords = factory, (), {}
  while isinstance(target, functools.partial):
    args, keywords = target.args + args, {**target.keywords, **keywords}
    target = target.func
  return target, args, keywords


def bind_norm(norm: ModuleDef, train: bool) -> ModuleDef:
  """Binds `use_running_average=not train` into a BatchNorm factory that has not set it yet.

  Other norm factories (GroupNorm, LayerNorm, ...) are returned unchanged, so blocks accept any
  normalisation while the `train` flag keeps its usual Flax meaning for BatchNorm.
  """
  target, _, keywords = unwrap_partial(norm)
  if (isinstance(target, type) and issubclass(target, nn.BatchNorm)
      and keywords.get("use_running_average") is None):
    return functools.partial(norm, use_running_average=not train)
  return norm


def norm_then_activation(norm: ModuleDef, activation: Optional[Activation]
                         ) -> Callable[[Array], Array]:
  """The norm layer (named "norm"), then the activation: the plain form of every conv unit."""
  def apply(x: Array) -> Array:
    x = norm(name="norm")(x)
    return x if activation is None else activation(x)
  return apply


class ConvNormAct(nn.Module):
  """Convolution (no bias), normalisation, optional activation: the unit every MobileNet is built of.

  `depthwise=True` is the depthwise kxk convolution of V1 section 3.1 (one filter per channel,
  kernel `[k, k, 1, C]`). `norm` is a factory such as `partial(nn.BatchNorm, use_running_average=
  not train)`; `activation=None` is linear (V2's projection). `conv` and `norm_act` are the layer
  factories that compute them (`nn.Conv` and `norm_then_activation` by default).
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  norm: ModuleDef = nn.BatchNorm
  activation: Optional[Activation] = jax.nn.relu6
  padding: str = "same"
  conv: ModuleDef = nn.Conv
  norm_act: NormAct = norm_then_activation
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    if self.depthwise and self.features != in_features:
      raise ValueError(f"a depthwise conv keeps the channel count: in {in_features}, "
                       f"asked for {self.features}")
    k = self.kernel_size
    x = self.conv(self.features, (k, k), self.strides,
                  padding=spatial_padding(x, k, self.strides, self.padding, self.depthwise),
                  feature_group_count=in_features if self.depthwise else 1, use_bias=False,
                  dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=conv_kernel_init,
                  name="conv")(x)
    return self.norm_act(self.norm, self.activation)(x)


class SqueezeExcite(nn.Module):
  """Squeeze-and-excite as used by MobileNetV3 (V3 paper section 5.3, Figure 4).

  Global average pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias), hard-sigmoid gate.
  The reduced width is `make_divisible(channels * se_ratio, 8)` of the block's *expanded* channels,
  as in every V3 reference. 1x1 convs on a 1x1 map are Dense layers.
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
    s = global_average_pool(x)[:, None, None, :]
    s = self.activation(dense(reduced, name="reduce")(s))
    s = self.gate(dense(channels, name="expand")(s))
    return x * s.astype(x.dtype)


def global_average_pool(x: Array) -> Array:
  """Mean over H and W, computed in float32 (so bf16 networks pool accurately), in x's dtype."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
