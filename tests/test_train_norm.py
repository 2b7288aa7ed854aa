"""GroupedBatchNorm: statistics per group of images against a hand (numpy) computation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mobilenet_jax
from mobilenet_jax.models.norm import GroupedBatchNorm
from mobilenet_jax.xla_cpu.norm_activation import BatchNormActivation

EPS, MOMENTUM = 1e-3, 0.9


def _reference(x, scale, bias, group):
  """Each group of `group` consecutive images normalised by its own mean and (biased) variance."""
  out, means, variances = [], [], []
  for g in np.split(x.astype(np.float64), x.shape[0] // group):
    mean = g.mean(axis=(0, 1, 2))
    var = ((g - mean) ** 2).mean(axis=(0, 1, 2))
    out.append((g - mean) / np.sqrt(var + EPS) * scale + bias)
    means.append(mean)
    variances.append(var)
  return np.concatenate(out), np.mean(means, 0), np.mean(variances, 0)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 3, 3, 5)).astype(np.float32) * 3 + np.arange(8)[:, None, None, None]
  layer = GroupedBatchNorm(group_size=2, momentum=MOMENTUM, epsilon=EPS)
  variables = layer.init(jax.random.PRNGKey(0), x, use_running_average=False)
  params = {"scale": rng.normal(size=5).astype(np.float32),
            "bias": rng.normal(size=5).astype(np.float32)}
  return x, layer, {"params": params, "batch_stats": variables["batch_stats"]}


@pytest.mark.parametrize("group", [2, 4, 8])
def test_training_statistics_match_hand_computation(data, group):
  x, _, variables = data
  layer = GroupedBatchNorm(group_size=group, momentum=MOMENTUM, epsilon=EPS)
  y, updates = layer.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  ref, mean, var = _reference(x, variables["params"]["scale"], variables["params"]["bias"], group)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  stats = updates["batch_stats"]
  np.testing.assert_allclose(stats["mean"], (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["var"], MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-5)


def test_whole_batch_group_and_inference_equal_flax_batchnorm(data):
  x, layer, variables = data
  flax_bn = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS)
  assert jax.tree.map(np.shape, flax_bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
                      ) == jax.tree.map(np.shape, layer.init(jax.random.PRNGKey(0), x,
                                                             use_running_average=False))
  whole = GroupedBatchNorm(group_size=0, momentum=MOMENTUM, epsilon=EPS)
  for use_running_average in (False, True):
    a = whole.apply(variables, x, use_running_average=use_running_average, mutable=["batch_stats"])
    b = flax_bn.apply(variables, x, use_running_average=use_running_average, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, a, b)
  # Inference of the grouped layer is inference of nn.BatchNorm, bit for bit.
  np.testing.assert_array_equal(layer.apply(variables, x, use_running_average=True),
                                flax_bn.apply(variables, x, use_running_average=True))


@pytest.mark.parametrize("fused", [False, True], ids=["grouped", "fused_with_activation"])
def test_bad_batch_or_group_size_is_a_clear_error(data, fused):
  """The same checks in GroupedBatchNorm and in the fused BatchNormActivation built on it."""
  x, layer, variables = data
  if fused:
    layer = BatchNormActivation(group_size=layer.group_size, activation=jax.nn.relu6)
  with pytest.raises(ValueError, match="multiple of the BatchNorm group size"):
    layer.apply(variables, x[:7], use_running_average=False, mutable=["batch_stats"])
  with pytest.raises(ValueError, match="group_size must be >= 0"):  # when the layer is made
    layer.clone(group_size=-2)


def test_network_with_grouped_norm_has_the_same_variables():
  """Checkpoints are interchangeable: same tree, shapes and names as the default BatchNorm."""
  norm = functools.partial(GroupedBatchNorm, group_size=2, momentum=0.9, epsilon=1e-3)
  x = jnp.zeros((4, 32, 32, 3))
  plain = mobilenet_jax.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35,
                                     num_classes=3)
  grouped = mobilenet_jax.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35,
                                       num_classes=3, norm_layer=norm)
  shapes = lambda m: jax.tree.map(np.shape, jax.eval_shape(
      functools.partial(m.init, train=False), jax.random.PRNGKey(0), x))
  assert shapes(plain) == shapes(grouped)
