"""BatchNorm as one multiply-add per element, optionally over groups of images ("ghost" statistics).

`BatchNorm` is `nn.BatchNorm` (same fields, same variables: params `scale`, `bias`; batch_stats
`mean`, `var`; checkpoints interchangeable) computed as `y = x * a + b` with per-channel
`a = scale / sqrt(var + eps)` and `b = bias - mean * a`, the form of PyTorch's CPU kernel, where
Flax computes `(x - mean) * a + bias`. Equal up to float rounding (~1e-7 relative; the difference
grows with |mean| / std), but XLA then neither materialises `x - mean` in the forward pass nor
differentiates through it. On this project's 2-core CPU (`python experiments/profile_v2_blocks.py
--norm`) BatchNorm + ReLU6 forward and backward on 32x56x56x144 took 23 ms instead of 33 ms, and
the whole V2 training step (batch 32, 224) 2545 ms instead of 2757 ms (medians of 8 interleaved
calls in one process; this VM's noise is large, single runs differ by 20%).
The statistics are Flax's own (`_compute_stats`, one pass for E[x] and E[x^2]).

`group_size` reproduces per-replica statistics. Under `jax.jit` over a batch sharded on a mesh,
BatchNorm normalises over the whole global batch (XLA inserts the cross-device reductions;
ANCHORS-training.md section 4.4). The MobileNetV3 paper trained with "batch size 4096 (128 images
per chip)" in TF1 TPUEstimator, whose BatchNorm normalised each replica's 128 images on their own.
`BatchNorm(group_size=128)` reproduces that on any mesh: the batch axis is reshaped
(B, ...) -> (B/g, g, ...) and each group of g consecutive images gets its own mean and variance.
Consecutive images of a batch sharded on `data` live on the same device when g divides the
per-device batch, so no cross-device traffic is needed. The running averages are updated with the
mean over groups of the group means and variances (what averaging the replicas' moving statistics
gives, as TF's cross-replica sync of moving averages did).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
# The statistics helpers nn.BatchNorm uses, so means and variances are computed as there.
from flax.linen.normalization import _canonicalize_axes, _compute_stats


def scale_shift(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array,
                bias: jax.Array, epsilon: float) -> jax.Array:
  """`(x - mean) / sqrt(var + epsilon) * scale + bias` as `x * a + b` (a, b per channel, float32).

  mean/var/scale/bias broadcast against x's trailing axes (shape [..., C]).
  """
  a = scale.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + epsilon)
  b = bias.astype(jnp.float32) - mean.astype(jnp.float32) * a
  return x * a + b


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` computed as `x * a + b`; training statistics over groups of `group_size` images.

  group_size None or 0: the whole batch. The batch (axis 0) must be a multiple of `group_size`
  during training; at initialisation any batch is accepted. Only the last axis may be the feature
  axis (NHWC images or [N, C] vectors); `axis_name` (pmap) is not supported: use jit over a mesh.
  """
  group_size: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    feature_axes = _canonicalize_axes(x.ndim, self.axis)
    if feature_axes != (x.ndim - 1,):
      raise ValueError(f"BatchNorm normalises the last axis only, got axis={self.axis}")
    if self.axis_name is not None:
      raise ValueError("this BatchNorm is for jit over a sharded batch; leave axis_name unset "
                       "(or use flax.linen.BatchNorm under pmap)")
    if self.group_size is not None and self.group_size < 0:
      raise ValueError(f"group_size must be >= 0 (0/None = whole batch), got {self.group_size}")
    feature_shape = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                            feature_shape)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                           feature_shape)
    scale = (self.param("scale", self.scale_init, feature_shape, self.param_dtype)
             if self.use_scale else jnp.ones(feature_shape, jnp.float32))
    bias = (self.param("bias", self.bias_init, feature_shape, self.param_dtype)
            if self.use_bias else jnp.zeros(feature_shape, jnp.float32))
    dtype = self.dtype or jnp.result_type(x, scale, bias)

    if use_running_average:
      return scale_shift(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon).astype(dtype)

    batch = x.shape[0]
    group = self.group_size or batch
    if batch % group:
      if not self.is_initializing():
        raise ValueError(f"batch of {batch} images is not a multiple of the BatchNorm group size "
                         f"{group}; choose batch_size as a multiple of bn_group_size")
      group = batch  # init may use any dummy batch; statistics are not stored then
    if mask is not None:
      if group != batch:
        raise ValueError("BatchNorm supports mask only with the whole batch as one group")
      mask = jnp.asarray(mask)[None]
    grouped = x.reshape((batch // group, group) + x.shape[1:])
    group_reduction = tuple(range(1, grouped.ndim - 1))
    mean, var = _compute_stats(grouped, group_reduction, dtype=self.dtype,
                               use_fast_variance=self.use_fast_variance, mask=mask,
                               force_float32_reductions=self.force_float32_reductions)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.mean(0)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.mean(0)
    # [groups, C] statistics broadcast over each group's [group, H, W, C] images.
    stats_shape = (batch // group,) + (1,) * (grouped.ndim - 2) + feature_shape
    y = scale_shift(grouped, mean.reshape(stats_shape), var.reshape(stats_shape), scale, bias,
                    self.epsilon)
    return y.reshape(x.shape).astype(dtype)
