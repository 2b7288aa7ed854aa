"""BatchNorm over groups of images: the per-replica ("ghost") statistics of the TF TPU recipes.

Under `jax.jit` over a batch sharded on a mesh, `nn.BatchNorm` normalises over the whole global batch
(XLA inserts the cross-device reductions: JAX's "Distributed arrays and automatic parallelization"
guide). The MobileNetV3 paper trained with "batch size 4096 (128 images per chip)" in TF1
TPUEstimator, whose BatchNorm normalised each replica's 128 images on their own.
`GroupedBatchNorm(group_size=128)` reproduces that on any mesh: the batch axis is reshaped (B, ...) -> (B/g, g, ...) and each group of g consecutive images
gets its own mean and variance. Consecutive images of a batch sharded on `data` live on the same
device when g divides the per-device batch, so no cross-device traffic is needed.

Variables are those of `nn.BatchNorm` (params `scale`, `bias`; batch_stats `mean`, `var`), so
checkpoints are interchangeable, and inference (running averages) is computed exactly as there.
The running averages are updated with the mean over groups of the group means and variances (what
averaging the replicas' moving statistics gives, as TF's cross-replica sync of moving averages did).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
# The same private helpers nn.BatchNorm uses, so normalisation is bit-identical to it.
from flax.linen.normalization import _canonicalize_axes, _compute_stats, _normalize


class GroupedBatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` whose training statistics cover groups of `group_size` consecutive images.

  group_size None or 0: the whole batch (plain `nn.BatchNorm`). The batch (axis 0) must be a
  multiple of `group_size` during training; at initialisation any batch is accepted. Only the last
  axis may be the feature axis (NHWC images or [N, C] vectors).
  """
  group_size: Optional[int] = None

  def __post_init__(self) -> None:
    if self.group_size is not None and self.group_size < 0:
      raise ValueError(f"group_size must be >= 0 (0/None = whole batch), got {self.group_size}")
    super().__post_init__()

  def training_group(self, batch: int) -> int:
    """Images per statistics group for a training batch of `batch` images.

    At initialisation any batch is accepted (statistics are not stored then)."""
    group = self.group_size or batch
    if batch % group:
      if not self.is_initializing():
        raise ValueError(f"batch of {batch} images is not a multiple of the BatchNorm group size "
                         f"{group}; choose batch_size as a multiple of bn_group_size")
      group = batch
    return group

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    feature_axes = _canonicalize_axes(x.ndim, self.axis)
    if feature_axes != (x.ndim - 1,):
      raise ValueError(f"GroupedBatchNorm normalises the last axis only, got axis={self.axis}")
    if self.axis_name is not None:
      raise ValueError("GroupedBatchNorm is for jit over a sharded batch; leave axis_name unset")
    feature_shape = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                            feature_shape)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                           feature_shape)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype, epsilon=self.epsilon,
                  use_bias=self.use_bias, use_scale=self.use_scale, bias_init=self.bias_init,
                  scale_init=self.scale_init,
                  force_float32_reductions=self.force_float32_reductions)
    reduction_axes = tuple(range(x.ndim - 1))
    if use_running_average:
      return _normalize(self, x, ra_mean.value, ra_var.value, reduction_axes, feature_axes,
                        **common)

    batch = x.shape[0]
    group = self.training_group(batch)
    if mask is not None:
      if group != batch:
        raise ValueError("GroupedBatchNorm supports mask only with the whole batch as one group")
      mask = jnp.asarray(mask)[None]
    grouped = x.reshape((batch // group, group) + x.shape[1:])
    group_reduction = tuple(range(1, grouped.ndim - 1))
    mean, var = _compute_stats(grouped, group_reduction, dtype=self.dtype,
                               use_fast_variance=self.use_fast_variance, mask=mask,
                               force_float32_reductions=self.force_float32_reductions)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.mean(0)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.mean(0)
    y = _normalize(self, grouped, mean, var, group_reduction, (grouped.ndim - 1,), **common)
    return y.reshape(x.shape)
