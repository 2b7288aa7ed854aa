"""The XLA:CPU kernels (mobilenet_jax/xla_cpu) equal XLA's own ops: convolutions, values and gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenet_jax as mj
from mobilenet_jax import compute, xla_cpu
from mobilenet_jax.models import layers
from mobilenet_jax.xla_cpu import conv as cpu_conv
from mobilenet_jax.xla_cpu.depthwise import depthwise_shifted

CASES = list(itertools.product((3, 5), (1, 2), ("same", "symmetric"), ((7, 9), (8, 6))))


def _reference(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1], precision=jax.lax.Precision.HIGHEST)


def _value_and_grads(fn, x, kernel, cotangent):
  out, vjp = jax.vjp(fn, x, kernel)
  return (out, *vjp(cotangent))


def _cpu_depthwise(x, kernel, stride, padding):
  """The CPU kernels' convolution with feature_group_count=C, as nn.Conv calls it."""
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  return cpu_conv.conv_general_dilated(x, kernel, (stride, stride), padding,
                                       dimension_numbers=numbers, feature_group_count=x.shape[-1])


@pytest.mark.parametrize("materialize_gradient", [True, False])
def test_depthwise_matches_grouped_convolution(materialize_gradient):
  """Forward, input gradient and kernel gradient, k=3/5, stride 1/2, both paddings, odd/even."""
  for case, (k, stride, mode, (h, w)) in enumerate(CASES):
    keys = jax.random.split(jax.random.key(case), 3)
    x = jax.random.normal(keys[0], (2, h, w, 5))
    kernel = jax.random.normal(keys[1], (k, k, 1, 5))
    padding = [layers.padding_for(h, k, stride, mode), layers.padding_for(w, k, stride, mode)]
    out_shape = jax.eval_shape(lambda: _reference(x, kernel, stride, padding)).shape
    cotangent = jax.random.normal(keys[2], out_shape)
    want = _value_and_grads(lambda a, b: _reference(a, b, stride, padding), x, kernel, cotangent)
    padding = tuple(map(tuple, padding))
    got = jax.jit(lambda a, b, c: _value_and_grads(
        lambda a, b: depthwise_shifted(a, b, stride, padding, materialize_gradient), a, b, c))(
            x, kernel, cotangent)
    for name, g, r in zip(("output", "d_input", "d_kernel"), got, want):
      assert g.shape == r.shape, (case, name)
      np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()),
                                 err_msg=f"{name} k={k} s={stride} {mode} {h}x{w}")


def test_shifted_keeps_bfloat16_and_matches_float32():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
  padding = [(0, 1), (0, 1)]
  f = lambda a, b: jnp.sum(_cpu_depthwise(a, b, 2, padding) ** 2)
  grad = jax.jit(jax.grad(f, argnums=(0, 1)))
  grads16 = grad(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  grads32 = grad(x, kernel)
  for g16, g32 in zip(grads16, grads32):
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(g16.astype(jnp.float32), g32, rtol=0.05,
                               atol=0.05 * float(jnp.abs(g32).max()))


def test_compute_selection_and_errors():
  assert compute.resolve_compute("auto") == ("cpu" if jax.default_backend() == "cpu" else "xla")
  assert compute.resolve_compute("xla") == "xla"
  assert compute.conv_norm_act_for("xla") is None   # the network's own plain ConvNormAct
  assert compute.conv_norm_act_for("cpu") is xla_cpu.conv_norm_act
  assert mj.create_model("mobilenet_v2", compute="xla").conv_norm_act is layers.ConvNormAct
  assert mj.create_model("mobilenet_v2", compute="cpu").conv_norm_act is xla_cpu.conv_norm_act
  with pytest.raises(ValueError, match="compute must be one of auto, xla, cpu, got 'shifted'"):
    mj.create_model("mobilenet_v2", compute="shifted")
  with pytest.raises(ValueError, match="not both"):
    mj.create_model("mobilenet_v2", compute="cpu", conv_norm_act=layers.ConvNormAct)


def test_depthwise_unit_keeps_grouped_kernel_layout_with_either_compute():
  for factory in (layers.ConvNormAct, xla_cpu.conv_norm_act):
    unit = factory(6, 5, 2, depthwise=True, norm=lambda name: (lambda x: x))
    variables = unit.init(jax.random.key(0), jnp.zeros((1, 9, 9, 6)))
    assert variables["params"]["conv"]["kernel"].shape == (5, 5, 1, 6)


@pytest.mark.parametrize("kernel_size,stride,in_features,padding,rewritten", [
    (1, 1, 5, "explicit", True),     # pointwise: [N*H*W, Cin] x [Cin, Cout]
    (3, 2, 3, "explicit", True),     # the stem: broadcast multiply-adds on CPU
    (3, 1, 2, "explicit", True),
    (1, 2, 40, "explicit", False),   # strided 1x1 with many inputs: left to XLA
    (3, 1, 5, "explicit", False),    # 45 > SHALLOW_CONV_MAX_DEPTH
    (1, 1, 5, "SAME", False),        # string padding: left to XLA
])
def test_cpu_convolutions_match_convolution(kernel_size, stride, in_features, padding,
                                                       rewritten):
  """Forward and both gradients equal lax's; only the expected cases are rewritten."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 8, in_features))
  kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, in_features, 4))
  dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  if padding == "explicit":
    padding = [layers.padding_for(7, kernel_size, stride, "same"),
               layers.padding_for(8, kernel_size, stride, "same")]

  def loss(conv):
    return lambda a, b: jnp.sum(jnp.sin(conv(a, b, (stride, stride), padding, lhs_dilation=(1, 1),
                                             rhs_dilation=(1, 1), dimension_numbers=dn,
                                             feature_group_count=1)))
  want = jax.value_and_grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, kernel)
  got = jax.value_and_grad(loss(cpu_conv.conv_general_dilated), argnums=(0, 1))(x, kernel)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
  jaxpr = str(jax.make_jaxpr(loss(cpu_conv.conv_general_dilated))(x, kernel))
  assert ("conv_general_dilated" not in jaxpr) == rewritten


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v3_small"])
def test_models_agree_across_compute(name):
  """A whole (narrow) network gives the same logits with XLA's ops and the CPU kernels."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  logits = []
  for compute_name in ("xla", "cpu"):
    model = mj.create_model(name, width_multiplier=0.35, num_classes=10,
                            compute=compute_name, padding="symmetric")
    if not logits:  # the same parameters for every impl; eval_shape + numpy is faster than init
      shapes = jax.eval_shape(model.init, jax.random.key(1), x)
      rng = np.random.default_rng(0)
      variables = jax.tree.map(
          lambda s: jnp.asarray(rng.uniform(0.5, 1.0, s.shape) / np.sqrt(np.prod(s.shape[:-1])),
                                s.dtype), shapes)
    logits.append(jax.jit(model.apply)(variables, x))
  for got in logits[1:]:
    np.testing.assert_allclose(got, logits[0], rtol=1e-4, atol=1e-5)
