"""fold_batch_norm: the folded inference network computes the same logits with fewer passes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mobilenet_jax as mj
from mobilenet_jax.models.blocks import InvertedResidual
from mobilenet_jax.models.builder import stem_materialized_for
from mobilenet_jax.models.fold import (BiasOnly, batch_norm_epsilon, fold_batch_norm,
                                       inference_function, loop_layout)


def _random_variables(model, x, seed):
  """Variables of `model` filled with numpy random values, as after training (non-trivial
  BatchNorm scales, biases and running statistics). Much faster than `model.init` on CPU."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def fill(path, leaf):
    name, shape = str(path[-1]), leaf.shape
    if "var" in name:
      return jnp.asarray(rng.uniform(0.5, 2.0, shape), leaf.dtype)
    if "scale" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, shape), leaf.dtype)
    if "mean" in name or "bias" in name:
      return jnp.asarray(0.3 * rng.standard_normal(shape), leaf.dtype)
    fan_in = int(np.prod(shape[:-1]))
    return jnp.asarray(rng.standard_normal(shape) / np.sqrt(fan_in), leaf.dtype)
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


def test_inference_function_micro_batches_give_the_logits_of_the_whole_batch():
  """Micro-batches of 2, two side by side per loop step, for batch sizes that take every path."""
  model = mj.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35, num_classes=10)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((7, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=4)
  expected = np.asarray(_logits(model, variables, x))
  predict, folded = inference_function(model, variables, micro_batch=2, side_by_side=2)
  assert [loop_layout(batch, 2, 2) for batch in (1, 2, 3, 4, 7)] == [(0, 1), (0, 1), (2, 1),
                                                                     (2, 2), (2, 2)]
  assert loop_layout(32, 0, 2) == (0, 1)
  for batch in (1, 3, 4, 7):  # whole; 1 micro-batch + 1; 2 side by side; 1 step of 2 + 3 left
    np.testing.assert_allclose(predict(folded, x[:batch]), expected[:batch], rtol=1e-4,
                               atol=1e-4, err_msg=f"batch {batch}")
  one_at_a_time, folded = inference_function(model, variables, micro_batch=2, side_by_side=1)
  np.testing.assert_allclose(one_at_a_time(folded, x), expected, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="side_by_side must be"):
    inference_function(model, variables, side_by_side=0)
  with pytest.raises(ValueError, match="micro_batch must be"):
    inference_function(model, variables, micro_batch=-1)


@pytest.mark.parametrize("strides,size,padding,kernel_size", [
    (1, 9, "same", 3), (2, 10, "same", 3), (2, 11, "symmetric", 5), (2, 9, "same", 5)])
def test_padding_before_the_expansion_gives_the_block_output(strides, size, padding, kernel_size):
  """The expanded border is set back to zero: without that, the bias and activation of the border
  pixels (non-zero here) would enter the depthwise convolution."""
  norm = functools.partial(BiasOnly)
  block = InvertedResidual(8, expansion=4, kernel_size=kernel_size, strides=strides, norm=norm,
                           activation=jax.nn.hard_swish, padding=padding)
  x = jnp.asarray(np.random.default_rng(5).standard_normal((2, size, size, 8)), jnp.float32)
  shapes = jax.eval_shape(block.init, jax.random.key(0), x)
  rng = np.random.default_rng(6)
  variables = jax.tree.map(lambda leaf: jnp.asarray(0.5 * rng.standard_normal(leaf.shape),
                                                    jnp.float32), shapes)
  expected = block.apply(variables, x)
  padded = block.clone(pad_before_expansion=True)
  got, state = padded.apply(variables, x, capture_intermediates=True)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  expanded = state["intermediates"]["expand"]["__call__"][0]
  pads = [mj.models.layers.padding_for(size, kernel_size, strides, padding)] * 2
  assert expanded.shape[1:3] == tuple(size + sum(p) for p in pads)
  with pytest.raises(ValueError, match="inference"):
    padded.apply(variables, x, train=True)


@pytest.mark.parametrize("name,size,options", [
    ("mobilenet_v2", 34, dict(width_multiplier=0.35)),
    ("mobilenet_v3_small", 35, dict(width_multiplier=0.35, padding="symmetric")),
])
def test_inference_function_padding_before_the_expansion_keeps_the_logits(name, size, options):
  model = mj.create_model(name, num_classes=10, **options)
  x = jnp.asarray(np.random.default_rng(7).standard_normal((2, size, size, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=8)
  expected = np.asarray(_logits(model, variables, x))
  # min size 1: every block with an expansion pads its input first
  predict, folded = inference_function(model, variables, micro_batch=0, pad_before_expansion=1)
  np.testing.assert_allclose(predict(folded, x), expected, rtol=1e-4,
                             atol=1e-5 * float(np.abs(expected).max()))
  with pytest.raises(ValueError, match="pad_before_expansion must be"):
    inference_function(model, variables, pad_before_expansion=-1)
  with pytest.raises(ValueError, match="materialize_stem must be"):
    inference_function(model, variables, materialize_stem="yes")
  with pytest.raises(ValueError, match="pad_before_expansion_min_size must be"):
    model.clone(pad_before_expansion_min_size=-1).init(jax.random.key(0), x)


def _conditionals(model, x, train=False):
  """Conditionals (fusion_barrier.materialized) in the traced init of `model` on `x`."""
  jaxpr = jax.make_jaxpr(functools.partial(model.init, train=train))(jax.random.key(0), x)
  return str(jaxpr).count("cond[")


@pytest.mark.parametrize("name,reads_only_depthwise", [
    ("mobilenet_v1", True), ("mobilenet_v2", True), ("mobilenet_v3_large", False),
    ("mobilenet_v3_small", False)])
def test_stem_is_materialized_where_only_the_first_depthwise_reads_it(name, reads_only_depthwise):
  """V3-Large's first block adds the stem back (shortcut), so its stem output is stored anyway;
  V3-Small's first depthwise convolution has stride 2.
  Full width: at 0.25, V2's first block has a shortcut too (8 -> 8 channels) and V3-Large's not."""
  model = mj.create_model(name, num_classes=10)
  assert stem_materialized_for(model.network_spec()) == reads_only_depthwise
  x = jnp.zeros((1, 32, 32, 3))
  assert _conditionals(model, x) == 0
  assert _conditionals(model.clone(materialize_stem=True), x) == int(reads_only_depthwise)
  assert (_conditionals(model.clone(materialize_stem=True), x, train=True)
          == _conditionals(model, x, train=True))


@pytest.mark.parametrize("name,expected", [
    # V3-Large: the three 28x28 blocks (Table 1 rows 5-7); its 14x14 and 7x7 SE blocks are smaller.
    # V3-Small: the first block (stride 2 from 112: 56x56, Table 2 row 1); the others: 14x14, 7x7.
    ("mobilenet_v3_large", 3), ("mobilenet_v3_small", 1), ("mobilenet_v2", 0)])
def test_se_input_is_materialized_in_the_blocks_at_least_the_min_size(name, expected):
  """Counted at 224x224 in the traced program (tracing only, nothing is compiled)."""
  model = mj.create_model(name, num_classes=10)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  assert _conditionals(model, x) == 0
  assert _conditionals(model.clone(materialize_se_input_min_size=28), x) == expected
  se_blocks = sum(layer.se_features is not None for layer in model.network_spec().blocks)
  assert _conditionals(model.clone(materialize_se_input_min_size=1), x) == se_blocks
  if se_blocks:
    with pytest.raises(ValueError, match="materialize_se_input is for inference"):
      _conditionals(model.clone(materialize_se_input_min_size=1), x, train=True)


def test_inference_function_materialized_se_inputs_keep_the_logits():
  """Every SE block's input in a buffer of its own (min size 1), symmetric padding and an odd size;
  bad option values raise."""
  model = mj.create_model("mobilenet_v3_small", num_classes=10, width_multiplier=0.35,
                          padding="symmetric")
  x = jnp.asarray(np.random.default_rng(9).standard_normal((2, 35, 35, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=10)
  expected = np.asarray(_logits(model, variables, x))
  predict, folded = inference_function(model, variables, micro_batch=0, materialize_se_input=1)
  np.testing.assert_allclose(predict(folded, x), expected, rtol=1e-4,
                             atol=1e-5 * float(np.abs(expected).max()))
  for bad in (-1, True, "yes"):
    with pytest.raises(ValueError, match="materialize_se_input must be"):
      inference_function(model, variables, materialize_se_input=bad)
  with pytest.raises(ValueError, match="materialize_se_input_min_size must be"):
    model.clone(materialize_se_input_min_size=-1).init(jax.random.key(0), x)
