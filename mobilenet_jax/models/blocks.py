"""The two MobileNet building blocks: depthwise separable (V1) and inverted residual (V2/V3)."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.models.layers import (Activation, Array, ConvNormAct, ModuleDef, SqueezeExcite,
                                         bind_norm, make_divisible, pad_spatial, spatial_padding,
                                         zero_border)
from mobilenet_jax.models.fusion_barrier import materialized


class DepthwiseSeparable(nn.Module):
  """V1 block (V1 paper section 3.1, Figure 3): depthwise kxk + BN + act, pointwise 1x1 + BN + act.

  Its cost is a fraction 1/N + 1/k^2 of the standard kxk convolution it replaces (paper eq. 5).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  norm: ModuleDef = nn.BatchNorm
  activation: Activation = jax.nn.relu6
  padding: str = "same"
  depthwise_impl: str = "auto"
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    unit = functools.partial(ConvNormAct, norm=bind_norm(self.norm, train), activation=self.activation,
                             padding=self.padding, depthwise_impl=self.depthwise_impl,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    x = unit(x.shape[-1], self.kernel_size, self.strides, depthwise=True, name="depthwise")(x)
    return unit(self.features, 1, name="pointwise")(x)


class InvertedResidual(nn.Module):
  """V2/V3 block (V2 paper section 3.3, Table 1; V3 paper Figure 4).

  1x1 expansion to `expanded_features` (default `make_divisible(in * expansion, 8)`; skipped when
  it equals the input width, e.g. t=1), depthwise kxk with stride, optional squeeze-excite on the
  expanded features, then a *linear* 1x1 projection (the linear bottleneck, section 3.2).
  The input is added back when stride is 1 and the widths match, with optional stochastic depth.

  `pad_before_expansion` (inference only, for a norm that acts on each pixel alone: BatchNorm with
  running statistics, the folded network's bias): the depthwise convolution's zero padding is
  applied to the narrow block input before the expansion, and the expanded border is set back to
  zero after its activation, instead of padding the expanded tensor. Same logits; on CPU it saves a
  pass over the widest tensor of the block, because XLA then fuses the bias and activation into the
  depthwise convolution (see fold.CPU_PAD_BEFORE_EXPANSION_MIN_SIZE).

  `materialize_se_input` (inference only): the depthwise output that squeeze-and-excite reads twice
  (its pool, then the gating multiply) is computed into a buffer of its own on a single CPU device
  (fusion_barrier.materialized). XLA:CPU had computed the depthwise convolution a second time
  inside the gating pass (see fold.CPU_MATERIALIZE_SE_INPUT_MIN_SIZE). Same values.
  """
  features: int
  expansion: float = 6.0
  expanded_features: Optional[int] = None
  kernel_size: int = 3
  strides: int = 1
  use_se: bool = False
  se_features: Optional[int] = None
  norm: ModuleDef = nn.BatchNorm
  activation: Activation = jax.nn.relu6
  se_activation: Activation = jax.nn.relu
  se_gate: Activation = jax.nn.hard_sigmoid
  drop_path_rate: float = 0.0
  padding: str = "same"
  depthwise_impl: str = "auto"
  pad_before_expansion: bool = False
  materialize_se_input: bool = False
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    in_features = x.shape[-1]
    expanded = self.expanded_features or make_divisible(in_features * self.expansion, 8)
    unit = functools.partial(ConvNormAct, norm=bind_norm(self.norm, train), padding=self.padding,
                             depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    shortcut = x
    depthwise_padding = self.padding
    if expanded != in_features and self.pad_before_expansion:
      if train:
        raise ValueError("pad_before_expansion is for inference (train=False) only: a norm with "
                         "batch statistics would count the padding")
      pads = spatial_padding(x, self.kernel_size, self.strides, self.padding)
      x = unit(expanded, 1, activation=self.activation, name="expand")(pad_spatial(x, pads))
      x, depthwise_padding = zero_border(x, pads), "valid"
    elif expanded != in_features:
      x = unit(expanded, 1, activation=self.activation, name="expand")(x)
    x = unit(expanded, self.kernel_size, self.strides, depthwise=True, padding=depthwise_padding,
             activation=self.activation, name="depthwise")(x)
    if self.use_se:
      if self.materialize_se_input:
        if train:
          raise ValueError("materialize_se_input is for inference (train=False) only")
        x = materialized(x, x[0, 0, 0, 0])
      x = SqueezeExcite(self.se_features, activation=self.se_activation, gate=self.se_gate,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="se")(x)
    x = unit(self.features, 1, activation=None, name="project")(x)
    if self.strides == 1 and in_features == self.features:
      if self.drop_path_rate > 0:
        # Stochastic depth (Huang et al. 2016): drop the whole residual branch per example.
        x = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3),
                       deterministic=not train, name="drop_path")(x)
      x = x + shortcut
    return x
