"""BatchNorm and the activation after it as one function with a hand-written gradient (training).

Differentiated op by op, `activation(BatchNorm(x))` made XLA:CPU store `x - mean` and
`x_hat * scale` as extra full-size tensors for the backward pass, materialise the activation's
gradient and `x - mean` again there, and recompute the convolution that produced x inside each of
the passes that read x. The classic fused form (Ioffe & Szegedy 2015, section 3; the form of
cuDNN's and PyTorch's batch-norm kernels) keeps only x and per-channel statistics:

    forward:  x computed once; mean(x) and mean(x^2) (two reductions); y = act((x - mean) * mul + bias)
    backward: gz = g * act'(z), with z recomputed from x, computed once (fused into g's producer
              where XLA can); sum(gz) and sum(gz * x) (two reductions over plain operands, the only
              ones XLA:CPU's reduction library fuses with); dx = gz * mul + a + b * x (a, b per channel)

The per-channel algebra in between (variance, rsqrt, scale) is differentiated by JAX itself
(`jax.vjp` of `_affine_from_moments`), so its edge cases (a variance clipped at zero) are those of
`flax.linen.BatchNorm`, whose forward arithmetic is reproduced operation for operation.
`BatchNormActivation` has `nn.BatchNorm`'s variables, so checkpoints do not change. What it saves
in time and memory: `python experiments/ab_train_step.py --change fused_batch_norm`
(docs/performance.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.models.layers import norm_then_activation, unwrap_partial
from mobilenet_jax.models.norm import GroupedBatchNorm
from mobilenet_jax.xla_cpu.fusion_barrier import materialized

Array = jax.Array
Activation = Callable[[Array], Array]


def _affine_from_moments(mean: Array, mean_sq: Array, scale: Array, epsilon: float
                         ) -> tuple[Array, Array, Array]:
  """(mean, variance, multiplier) as flax's BatchNorm computes them (fast variance, clipped at 0)."""
  var = jnp.maximum(0.0, mean_sq - mean * mean)
  return mean, var, jax.lax.rsqrt(var + epsilon) * scale


def _statistics_dtype(x: Array) -> Any:
  """float32 for float32 and narrower inputs (as flax's force_float32_reductions), else x's."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _forward(x, scale, bias, axes, epsilon, activation, out_dtype):
  # x (a convolution's output) is read by three passes here and two in the backward; computed once.
  x = materialized(x, scale[0])
  xf = x.astype(_statistics_dtype(x))
  moments = (jnp.mean(xf, axes, keepdims=True), jnp.mean(xf * xf, axes, keepdims=True))
  mean, var, mul = _affine_from_moments(*moments, scale, epsilon)
  z = ((xf - mean) * mul + bias).astype(out_dtype)
  y = z if activation is None else activation(z)
  return (y, mean, var), (x, moments, mean, mul, scale, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def batch_norm_activation(x: Array, scale: Array, bias: Array, axes: tuple[int, ...],
                          epsilon: float, activation: Optional[Activation], out_dtype: Any
                          ) -> tuple[Array, Array, Array]:
  """`activation(BatchNorm(x))` with batch statistics over `axes`; returns (y, mean, var).

  `mean` and `var` keep the reduced axes (size 1), for the running averages. `scale` and `bias`
  broadcast against x's last axis. Equal to `nn.BatchNorm(use_running_average=False)` followed by
  `activation`, up to float summation order in the gradients.
  """
  return _forward(x, scale, bias, axes, epsilon, activation, out_dtype)[0]


def _batch_norm_activation_fwd(x, scale, bias, axes, epsilon, activation, out_dtype):
  return _forward(x, scale, bias, axes, epsilon, activation, out_dtype)


def _batch_norm_activation_bwd(axes, epsilon, activation, out_dtype, residuals, cotangents):
  x, moments, mean, mul, scale, bias = residuals
  g, g_mean, g_var = cotangents
  # A fresh x keeps XLA from sharing `x - mean` with the forward pass, which would store it as
  # one more full-size tensor.
  x = materialized(x, scale[0])
  xf = x.astype(_statistics_dtype(x))
  if activation is None:
    gz = g.astype(xf.dtype)
  else:
    z = ((xf - mean) * mul + bias).astype(out_dtype)
    gz = jax.vjp(activation, z)[1](g)[0].astype(xf.dtype)
  # gz, computed once (with g's producer where XLA can), feeds three passes: the two sums
  # (reductions that XLA:CPU runs fast only over a plain operand) and dx.
  gz = materialized(gz, scale[0])
  sum_gz = jnp.sum(gz, axes, keepdims=True)
  # sum(gz * (x - mean)) as sum(gz * x) - mean * sum(gz): a reduction over `gz * (x - mean)` made
  # XLA store `x - mean` as one more full-size tensor (slower, more memory). It cancels
  # when a channel's mean is large against its spread, as Flax's fast variance does in the forward.
  sum_gz_centered = jnp.sum(gz * xf, axes, keepdims=True) - mean * sum_gz
  # z = (x - mean) * mul + bias: the gradients of its per-channel inputs.
  affine, affine_vjp = jax.vjp(lambda m, m2, s: _affine_from_moments(m, m2, s, epsilon),
                               *moments, scale)
  cotangents = (g_mean - mul * sum_gz, g_var, sum_gz_centered)
  d_mean, d_mean_sq, d_scale = affine_vjp(
      tuple(c.astype(a.dtype) for c, a in zip(cotangents, affine)))
  count = math.prod(x.shape[axis] for axis in axes)
  dx = gz * mul + d_mean / count + d_mean_sq * (2.0 / count) * xf
  d_bias = jnp.sum(sum_gz.reshape(-1, sum_gz.shape[-1]), 0).reshape(bias.shape)
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


batch_norm_activation.defvjp(_batch_norm_activation_fwd, _batch_norm_activation_bwd)


# The BatchNorm settings the fused function computes (the defaults of nn.BatchNorm).
_PLAIN_BATCH_NORM = dict(axis=-1, axis_name=None, axis_index_groups=None, use_bias=True,
                         use_scale=True, use_fast_variance=True, force_float32_reductions=True)


def fusible_batch_norm(norm: Any) -> Optional[dict[str, Any]]:
  """The keywords of a `nn.BatchNorm`/`GroupedBatchNorm` factory that `BatchNormActivation` can
  run, or None for any other norm factory (GroupNorm, a BatchNorm over other axes or devices, ...)."""
  target, args, keywords = unwrap_partial(norm)
  if args or target not in (nn.BatchNorm, GroupedBatchNorm):
    return None
  if any(keywords.get(key, default) != default for key, default in _PLAIN_BATCH_NORM.items()):
    return None
  return keywords


class BatchNormActivation(GroupedBatchNorm):
  """`activation(BatchNorm(x))`, with the fused gradient of `batch_norm_activation` in training.

  Same variables as `nn.BatchNorm` (params `scale`, `bias`; batch_stats `mean`, `var`) and the same
  results; `group_size` as in `GroupedBatchNorm`. Inference (running averages) is `nn.BatchNorm`
  followed by `activation`.
  """
  activation: Optional[Activation] = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: Optional[bool] = None, *,
               mask: Optional[Array] = None) -> Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    plain = all(getattr(self, key) == default for key, default in _PLAIN_BATCH_NORM.items()
                if key != "axis") and self.axis in (-1, x.ndim - 1)
    if (use_running_average or not plain or mask is not None
        or self.is_initializing()):
      given = None if self.use_running_average is not None else use_running_average
      y = super().__call__(x, given, mask=mask)
      return y if self.activation is None else self.activation(y)
    batch, channels = x.shape[0], x.shape[-1]
    group = self.training_group(batch)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (channels,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (channels,))
    scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
    out_dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
    # The whole batch is normalised without a group axis, as nn.BatchNorm does: reshaping the
    # batch-sharded axis to (1, batch) changed the third-step loss of tests/test_train.py's job on
    # 8 devices (compiled without optimisations) by 2e-4 against the job on 1 device.
    grouped = x if group == batch else x.reshape((batch // group, group) + x.shape[1:])
    first = 0 if group == batch else 1
    y, mean, var = batch_norm_activation(grouped, scale, bias, tuple(range(first, grouped.ndim - 1)),
                                         self.epsilon, self.activation, out_dtype)
    ra_mean.value = (self.momentum * ra_mean.value
                     + (1 - self.momentum) * mean.reshape(-1, channels).mean(0))
    ra_var.value = (self.momentum * ra_var.value
                    + (1 - self.momentum) * var.reshape(-1, channels).mean(0))
    return y.reshape(x.shape)


def fused_norm_activation(norm: Any, activation: Optional[Activation]) -> Callable[[Array], Array]:
  """The `norm_act` factory of the CPU kernels: `BatchNormActivation` (named "norm") where `norm`
  is a plain BatchNorm factory, `layers.norm_then_activation` for any other norm."""
  settings = fusible_batch_norm(norm)
  if settings is None:
    return norm_then_activation(norm, activation)
  return BatchNormActivation(**settings, activation=activation, name="norm")
