"""fold_batch_norm: the folded inference network computes the same logits with fewer passes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mobilenet_jax as mj
from mobilenet_jax.models.fold import BiasOnly, batch_norm_epsilon, fold_batch_norm


def _random_variables(model, x, seed):
  """Variables of `model` filled with numpy random values, as after training (non-trivial
  BatchNorm scales, biases and running statistics). Much faster than `model.init` on CPU."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def fill(path, leaf):
    # Cast on the host and device_put: jnp.asarray of a host array compiles a program per shape.
    return jax.device_put(values(str(path[-1]), leaf.shape).astype(leaf.dtype))

  def values(name, shape):
    if "var" in name:
      return rng.uniform(0.5, 2.0, shape)
    if "scale" in name:
      return rng.uniform(0.5, 1.5, shape)
    if "mean" in name or "bias" in name:
      return 0.3 * rng.standard_normal(shape)
    fan_in = int(np.prod(shape[:-1]))
    return rng.standard_normal(shape) / np.sqrt(fan_in)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _logits(model, variables, x):
  return jax.jit(model.apply)(variables, x)


@pytest.mark.parametrize("name,options", [
    ("mobilenet_v1", dict(width_multiplier=0.25, bn_epsilon=1e-5, padding="symmetric")),
    ("mobilenet_v3_small", dict(width_multiplier=0.35)),
])
def test_folded_logits_equal_unfolded(name, options):
  model = mj.create_model(name, num_classes=10, **options)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = _random_variables(model, x, 2)
  folded_model, folded = fold_batch_norm(model, variables)
  assert set(folded) == {"params"}
  want = _logits(model, variables, x)
  got = _logits(folded_model, folded, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))
  # Each BatchNorm keeps only its bias: one per-channel vector fewer per norm.
  scales = sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
               if "norm" in str(path) and "scale" in str(path[-1]))
  assert mj.count_params(folded) == mj.count_params(variables) - scales
  assert model.norm_layer is None and "batch_stats" in variables  # inputs left unchanged


def test_fold_uses_the_norm_layer_epsilon_and_bfloat16():
  norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=0.1)
  model = mj.create_model("mobilenet_v1", width_multiplier=0.25, num_classes=5, norm_layer=norm)
  assert batch_norm_epsilon(model) == 0.1
  assert batch_norm_epsilon(mj.create_model("mobilenet_v2", bn_epsilon=1e-5)) == 1e-5
  x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
  variables = _random_variables(model, x, 3)
  folded_model, folded = fold_batch_norm(model, variables)
  np.testing.assert_allclose(_logits(folded_model, folded, x), _logits(model, variables, x),
                             rtol=1e-4, atol=1e-5)
  bf16 = model.clone(dtype=jnp.bfloat16)
  folded_bf16, folded = fold_batch_norm(bf16, variables)
  out = _logits(folded_bf16, folded, x)
  assert out.dtype == jnp.bfloat16
  want = _logits(bf16, variables, x).astype(jnp.float32)
  np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=0.05,
                             atol=0.05 * float(jnp.abs(want).max()))


def test_fold_rejects_what_cannot_be_folded():
  model = mj.create_model("mobilenet_v3_small", width_multiplier=0.35,
                          norm_layer=functools.partial(nn.GroupNorm, num_groups=8))
  with pytest.raises(ValueError, match="only BatchNorm can be folded"):
    fold_batch_norm(model, {"params": {}, "batch_stats": {}})
  plain = mj.create_model("mobilenet_v3_small", width_multiplier=0.35)
  with pytest.raises(ValueError, match="'params' and 'batch_stats'"):
    fold_batch_norm(plain, {"params": {}})
  with pytest.raises(ValueError, match="no conv \\+ BatchNorm pair"):
    fold_batch_norm(plain, {"params": {"x": {"kernel": jnp.ones(3)}}, "batch_stats": {}})


def test_bias_only_adds_a_bias():
  module = BiasOnly()
  variables = {"params": {"bias": jnp.arange(3.0)}}
  np.testing.assert_array_equal(module.apply(variables, jnp.ones((2, 3))),
                                jnp.broadcast_to(1 + jnp.arange(3.0), (2, 3)))
