"""The two MobileNet building blocks: depthwise separable (V1) and inverted residual (V2/V3)."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.models.layers import (Activation, Array, ConvNormAct, ModuleDef, SqueezeExcite,
                                         bind_norm, make_divisible)


class DepthwiseSeparable(nn.Module):
  """V1 block (V1 paper section 3.1, Figure 3): depthwise kxk + BN + act, pointwise 1x1 + BN + act.

  Its cost is a fraction 1/N + 1/k^2 of the standard kxk convolution it replaces (paper eq. 5).
  `conv_norm_act` is the factory of its two units (`ConvNormAct` with the network's kernels).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  norm: ModuleDef = nn.BatchNorm
  activation: Activation = jax.nn.relu6
  padding: str = "same"
  conv_norm_act: ModuleDef = ConvNormAct
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    unit = functools.partial(self.conv_norm_act, norm=bind_norm(self.norm, train),
                             activation=self.activation, padding=self.padding, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    x = unit(x.shape[-1], self.kernel_size, self.strides, depthwise=True, name="depthwise")(x)
    return unit(self.features, 1, name="pointwise")(x)


class InvertedResidual(nn.Module):
  """V2/V3 block (V2 paper section 3.3, Figure 3 and Table 1; V3 paper Figure 4).

  1x1 expansion to `expanded_features` (default `make_divisible(in * expansion, 8)`; skipped when
  it equals the input width, e.g. t=1), depthwise kxk with stride, optional squeeze-excite on the
  expanded features, then a *linear* 1x1 projection (the linear bottleneck, section 3.2).
  The input is added back when stride is 1 and the widths match, with optional stochastic depth.
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
  conv_norm_act: ModuleDef = ConvNormAct
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    in_features = x.shape[-1]
    expanded = self.expanded_features or make_divisible(in_features * self.expansion, 8)
    unit = functools.partial(self.conv_norm_act, norm=bind_norm(self.norm, train),
                             padding=self.padding, dtype=self.dtype, param_dtype=self.param_dtype)
    shortcut = x
    if expanded != in_features:
      x = unit(expanded, 1, activation=self.activation, name="expand")(x)
    x = unit(expanded, self.kernel_size, self.strides, depthwise=True,
             activation=self.activation, name="depthwise")(x)
    if self.use_se:
      x = SqueezeExcite(self.se_features, activation=self.se_activation, gate=self.se_gate,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="se")(x)
    x = unit(self.features, 1, activation=None, name="project")(x)  # linear bottleneck
    if self.strides == 1 and in_features == self.features:
      if self.drop_path_rate > 0:
        # Stochastic depth (Huang et al. 2016): drop the whole residual branch per example.
        x = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3),
                       deterministic=not train, name="drop_path")(x)
      x = x + shortcut
    return x
