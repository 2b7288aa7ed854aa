"""BatchNormActivation (fused BatchNorm + activation gradient) against nn.BatchNorm + the activation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mobilenet_jax.models.initialization import init_variables
from mobilenet_jax import xla_cpu
from mobilenet_jax.models.norm import GroupedBatchNorm
from mobilenet_jax.xla_cpu.norm_activation import BatchNormActivation, fusible_batch_norm
from mobilenet_jax.models.registry import create_model

EPS, MOMENTUM = 1e-3, 0.9


def _inputs(dtype=jnp.float32, constant_channel=False):
  rng = np.random.default_rng(0)
  # A mean far from 0 and channels of different spread, as after a convolution.
  x = rng.normal(size=(4, 5, 6, 8)) * np.linspace(0.5, 4, 8) + np.linspace(-3, 5, 8)
  if constant_channel:
    x[..., 0] = 1.5  # variance 0: flax clips mean(x^2) - mean(x)^2 at 0
  params = {"scale": rng.normal(size=8).astype(np.float32),
            "bias": rng.normal(size=8).astype(np.float32)}
  cotangent = rng.normal(size=x.shape).astype(np.float32)
  return jnp.asarray(x, dtype), params, jnp.asarray(cotangent, dtype)


def _loss_and_grads(layer, activation, x, params, cotangent):
  stats = {"mean": jnp.zeros(8), "var": jnp.ones(8)}

  def loss(params, x):
    y, updates = layer.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
    if activation is not None:
      y = activation(y)
    return jnp.sum(y.astype(jnp.float32) * cotangent.astype(jnp.float32)), (y, updates)

  (value, (y, updates)), grads = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return value, y, updates, grads


def _compare(fused, reference, rtol, atol):
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(reference)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("activation", [jax.nn.relu6, jax.nn.hard_swish, jax.nn.relu, None],
                         ids=["relu6", "hard_swish", "relu", "linear"])
@pytest.mark.parametrize("group_size", [None, 2])
def test_fused_equals_batchnorm_then_activation(activation, group_size):
  x, params, cotangent = _inputs()
  common = dict(use_running_average=False, momentum=MOMENTUM, epsilon=EPS, group_size=group_size)
  fused = _loss_and_grads(BatchNormActivation(**common, activation=activation),
                          None, x, params, cotangent)
  reference = _loss_and_grads(GroupedBatchNorm(**common), activation, x, params, cotangent)
  _compare(fused, reference, rtol=2e-5, atol=2e-5)


def test_zero_variance_channel_and_bfloat16():
  x, params, cotangent = _inputs(constant_channel=True)
  common = dict(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)
  fused = _loss_and_grads(BatchNormActivation(**common, activation=jax.nn.relu6),
                          None, x, params, cotangent)
  reference = _loss_and_grads(nn.BatchNorm(**common), jax.nn.relu6, x, params, cotangent)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(fused))
  _compare(fused, reference, rtol=2e-5, atol=2e-5)

  x, params, cotangent = _inputs(jnp.bfloat16)
  common["dtype"] = jnp.bfloat16
  fused = _loss_and_grads(BatchNormActivation(**common, activation=jax.nn.hard_swish),
                          None, x, params, cotangent)
  reference = _loss_and_grads(nn.BatchNorm(**common), jax.nn.hard_swish, x, params, cotangent)
  assert fused[1].dtype == jnp.bfloat16
  _compare(fused, reference, rtol=2e-2, atol=5e-2)


def test_inference_and_unfused_paths_are_flax_batchnorm():
  x, params, _ = _inputs()
  variables = {"params": params, "batch_stats": {"mean": jnp.linspace(-1, 1, 8),
                                                 "var": jnp.linspace(0.5, 2, 8)}}
  # Running averages; and training with a setting the fused function does not compute.
  for use_running_average, settings in ((True, {}), (False, {"use_fast_variance": False})):
    layer = BatchNormActivation(use_running_average=use_running_average, epsilon=EPS,
                                activation=jax.nn.relu6, **settings)
    y = layer.apply(variables, x, mutable=["batch_stats"])[0]
    ref = nn.BatchNorm(use_running_average=use_running_average, epsilon=EPS, **settings).apply(
        variables, x, mutable=["batch_stats"])[0]
    np.testing.assert_array_equal(y, jax.nn.relu6(ref))


def test_which_norms_are_fused():
  assert fusible_batch_norm(functools.partial(nn.BatchNorm, momentum=0.9)) == {"momentum": 0.9}
  assert fusible_batch_norm(functools.partial(GroupedBatchNorm, group_size=4)) == {"group_size": 4}
  for other in (functools.partial(nn.GroupNorm, 8), nn.LayerNorm,
                functools.partial(nn.BatchNorm, axis_name="batch"),
                functools.partial(nn.BatchNorm, use_scale=False),
                functools.partial(nn.BatchNorm, axis=1),
                functools.partial(nn.BatchNorm, use_fast_variance=False),
                type("MyBatchNorm", (nn.BatchNorm,), {})):
    assert fusible_batch_norm(other) is None, other


def test_float64_parameters_and_inputs():
  """Every dtype nn.BatchNorm accepts: float64 parameters once failed in the backward pass
  ("got float64[...], but expected float32[...]")."""
  with jax.enable_x64(True):
    x, params, cotangent = _inputs(jnp.float64)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    cotangent = cotangent.astype(jnp.float64)
    common = dict(use_running_average=False, momentum=MOMENTUM, epsilon=EPS,
                  param_dtype=jnp.float64)
    fused = _loss_and_grads(BatchNormActivation(**common, activation=jax.nn.hard_swish),
                            None, x, params, cotangent)
    reference = _loss_and_grads(nn.BatchNorm(**common), jax.nn.hard_swish, x, params, cotangent)
    _compare(fused, reference, rtol=1e-6, atol=1e-6)


def test_network_gradients_and_variables_unchanged():
  """A whole V3-Small (hard-swish, ReLU, linear projections, SE) with and without the fusion."""
  model = create_model("mobilenet_v3_small", width_multiplier=0.5, num_classes=10, compute="cpu")
  images = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32, 32, 3)), jnp.float32)
  variables = init_variables(model, resolution=32, key=jax.random.key(0))  # model.init's values

  def step(model, params):
    def loss(params):
      logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                    images, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(1)})
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), updates
    return jax.jit(jax.grad(loss, has_aux=True))(params)

  fused = step(model, variables["params"])
  unfused = model.clone(conv_norm_act=xla_cpu.make_conv_norm_act(fused_batch_norm=False))
  reference = step(unfused, variables["params"])
  assert jax.tree.structure(fused) == jax.tree.structure(reference)
  # Relative to each gradient's largest entry: BatchNorm over 4 images of 1x1 in the last blocks
  # amplifies float rounding (both are ~3e-5 from a float64 computation). The floor is for
  # gradients that are 0 up to rounding (a bias followed by another BatchNorm).
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(reference)):
    a, b = np.asarray(a), np.asarray(b)   # on the host: no compilation per shape
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)) + 1e-6
  # Without the fusion the network has the same variables: checkpoints are interchangeable.
  unfused_init = lambda: unfused.init(jax.random.key(0), images, train=False)
  assert jax.tree.map(np.shape, jax.eval_shape(unfused_init)) == jax.tree.map(np.shape, variables)
