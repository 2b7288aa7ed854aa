"""The fast inference programs give the logits of `model.apply`, for every option and batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mobilenet_jax as mj
from mobilenet_jax.xla_cpu.inference import cpu_inference_function, loop_layout
from test_fold import _random_variables


def _logits(model, variables, x):
  return np.asarray(jax.jit(model.apply)(variables, x))


def _conditionals(predict, variables, x):
  """Fusion boundaries (fusion_barrier.materialized: one conditional each) in the program."""
  return str(jax.make_jaxpr(predict)(variables, x)).count("cond[")


def test_micro_batches_give_the_logits_of_the_whole_batch():
  """Micro-batches of 2, two side by side per loop step, for batch sizes that take every path."""
  model = mj.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35, num_classes=10)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((7, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=4)
  expected = _logits(model, variables, x)
  predict, folded = cpu_inference_function(model, variables, micro_batch=2, side_by_side=2)
  assert [loop_layout(batch, 2, 2) for batch in (1, 2, 3, 4, 7)] == [(0, 1), (0, 1), (2, 1),
                                                                     (2, 2), (2, 2)]
  assert loop_layout(32, 0, 2) == (0, 1)
  for batch in (1, 3, 4, 7):  # whole; 1 micro-batch + 1; 2 side by side; 1 step of 2 + 3 left
    np.testing.assert_allclose(predict(folded, x[:batch]), expected[:batch], rtol=1e-4,
                               atol=1e-4, err_msg=f"batch {batch}")
  one_at_a_time, folded = cpu_inference_function(model, variables, micro_batch=2, side_by_side=1)
  np.testing.assert_allclose(one_at_a_time(folded, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,size,options,stored", [
    # every rearrangement on at this size (min sizes 1): the stem stored once where the first
    # block's depthwise conv alone reads it (V1, V2, and V3-Large x0.35, whose first block has no
    # shortcut at this width), every 5x5 SE input (6 in V3-Large, 8 in V3-Small), V2's ReLU6
    # blocks padded before their expansion
    ("mobilenet_v1", 35, dict(width_multiplier=0.25, padding="keras"), 1),
    ("mobilenet_v2", 33, dict(width_multiplier=0.35, padding="symmetric"), 1),
    ("mobilenet_v3_large", 64, dict(width_multiplier=0.35), 7),
    ("mobilenet_v3_small", 32, dict(width_multiplier=0.35, num_classes=0), 8),
    ("mobilenet_v1_conv", 32, dict(width_multiplier=0.25), 0),
])
def test_cpu_program_equals_apply_with_every_rearrangement(name, size, options, stored):
  options.setdefault("num_classes", 10)
  model = mj.create_model(name, **options)
  x = jnp.asarray(np.random.default_rng(7).standard_normal((3, size, size, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=8)
  want = _logits(model, variables, x)
  scale = float(np.abs(want).max())
  for rearranged in (True, False):
    min_size = 1 if rearranged else 0
    predict, folded = cpu_inference_function(
        model, variables, micro_batch=0, store_stem=rearranged,
        pad_before_expansion_min_size=min_size, se_input_min_size=min_size)
    got = predict(folded, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=f"rearranged={rearranged}")
    assert _conditionals(predict, folded, x) == (stored if rearranged else 0)


def test_padding_before_the_expansion_zeroes_the_expanded_border():
  """Mutation check: without zeroing, the border pixels' bias and ReLU6 (non-zero with these
  random folded biases) enter the depthwise convolution and the logits change."""
  from mobilenet_jax.xla_cpu import inference
  model = mj.create_model("mobilenet_v2", width_multiplier=0.35, num_classes=10)
  x = jnp.asarray(np.random.default_rng(9).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=10)
  want = _logits(model, variables, x)
  options = dict(micro_batch=0, pad_before_expansion_min_size=1)
  predict, folded = cpu_inference_function(model, variables, **options)
  np.testing.assert_allclose(predict(folded, x), want, rtol=1e-4, atol=1e-4)
  original = inference.zero_border
  try:
    inference.zero_border = lambda y, pads: y
    broken, folded = cpu_inference_function(model, variables, **options)
    assert not np.allclose(broken(folded, x), want, rtol=1e-3, atol=1e-3)
  finally:
    inference.zero_border = original


def test_bfloat16_model_and_inference_function_dispatch():
  model = mj.create_model("mobilenet_v3_small", width_multiplier=0.35, num_classes=10,
                          dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(11).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=12)
  want = _logits(model, variables, x).astype(np.float32)
  predict, folded = mj.inference_function(model, variables)
  got = predict(folded, x)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05,
                             atol=0.05 * float(np.abs(want).max()))
  # compute="xla": the folded network's apply; the CPU options do not apply there.
  xla = model.clone(dtype=None)
  predict, folded = mj.inference_function(xla, variables, compute="xla")
  assert _conditionals(predict, folded, x) == 0   # none of the CPU engine's fusion boundaries
  np.testing.assert_allclose(predict(folded, x), _logits(xla, variables, x), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="apply to the XLA:CPU inference program only"):
    mj.inference_function(xla, variables, compute="xla", micro_batch=4)
  with pytest.raises(ValueError, match="compute must be one of auto, xla, cpu"):
    mj.inference_function(xla, variables, compute="gpu")


class _SigmoidGateV3(mj.MobileNetV3):
  """V3 whose squeeze-excite uses a sigmoid gate and a SiLU (as EfficientNet's): block fields."""

  @nn.nowrap
  def layer(self, layer, norm, num_blocks):
    if layer.kind != mj.LayerKind.INVERTED_RESIDUAL:
      return super().layer(layer, norm, num_blocks)
    s = layer.spec
    return mj.InvertedResidual(
        s.features, expanded_features=s.expanded_features, kernel_size=s.kernel_size,
        strides=s.stride, use_se=s.se_features is not None, se_features=s.se_features, norm=norm,
        activation=self._act(s.activation), se_activation=jax.nn.silu, se_gate=jax.nn.sigmoid,
        padding=self.padding, conv_norm_act=self.conv_norm_act, name=layer.name)


def test_cpu_engine_reads_the_blocks_squeeze_excite_fields():
  """The CPU engine computes the network's own blocks: a changed SE gate gives the same logits
  as `model.apply` (a hard-coded ReLU/hard-sigmoid would not)."""
  model = _SigmoidGateV3(variant="small", width_multiplier=0.35, num_classes=10)
  x = jnp.asarray(np.random.default_rng(13).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x, seed=14)
  want = _logits(model, variables, x)
  assert not np.allclose(want, _logits(mj.MobileNetV3(variant="small", width_multiplier=0.35,
                                                      num_classes=10), variables, x), atol=1e-3)
  predict, folded = mj.inference_function(model, variables, compute="cpu", micro_batch=0)
  np.testing.assert_allclose(predict(folded, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("option,value,message", [
    ("side_by_side", 0, "side_by_side must be an int >= 1"),
    ("micro_batch", -1, "micro_batch must be an int >= 0"),
    ("pad_before_expansion_min_size", 2.5, "pad_before_expansion_min_size must be an int >= 0"),
    ("se_input_min_size", -1, "se_input_min_size must be an int >= 0"),
    ("store_stem", "yes", "store_stem must be True or False"),
])
def test_bad_options_are_clear_errors(option, value, message):
  model = mj.create_model("mobilenet_v3_small", width_multiplier=0.35, num_classes=10)
  with pytest.raises(ValueError, match=message):
    cpu_inference_function(model, {"params": {}, "batch_stats": {}}, **{option: value})
