"""Every depthwise implementation, and convolutions as matmuls, equal lax.conv_general_dilated."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenet_jax as mj
from mobilenet_jax.models import layers

IMPLS = [impl for impl in layers.DEPTHWISE_IMPLS if impl != "auto"]
CASES = list(itertools.product((3, 5), (1, 2), ("same", "symmetric"), ((7, 9), (8, 6))))


def _reference(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1], precision=jax.lax.Precision.HIGHEST)


def _value_and_grads(fn, x, kernel, cotangent):
  out, vjp = jax.vjp(fn, x, kernel)
  return (out, *vjp(cotangent))


@pytest.mark.parametrize("impl", IMPLS)
def test_depthwise_matches_grouped_convolution(impl):
  """Forward, input gradient and kernel gradient, k=3/5, stride 1/2, both paddings, odd/even."""
  for case, (k, stride, mode, (h, w)) in enumerate(CASES):
    keys = jax.random.split(jax.random.key(case), 3)
    x = jax.random.normal(keys[0], (2, h, w, 5))
    kernel = jax.random.normal(keys[1], (k, k, 1, 5))
    padding = [layers.padding_for(h, k, stride, mode), layers.padding_for(w, k, stride, mode)]
    out_shape = jax.eval_shape(lambda: _reference(x, kernel, stride, padding)).shape
    cotangent = jax.random.normal(keys[2], out_shape)
    want = _value_and_grads(lambda a, b: _reference(a, b, stride, padding), x, kernel, cotangent)
    got = jax.jit(lambda a, b, c: _value_and_grads(
        lambda a, b: layers.depthwise_conv(a, b, stride, padding, impl), a, b, c))(
            x, kernel, cotangent)
    for name, g, r in zip(("output", "d_input", "d_kernel"), got, want):
      assert g.shape == r.shape, (case, name)
      np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()),
                                 err_msg=f"{impl} {name} k={k} s={stride} {mode} {h}x{w}")


def test_shifted_keeps_bfloat16_and_matches_float32():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
  padding = [(0, 1), (0, 1)]
  f = lambda a, b: jnp.sum(layers.depthwise_conv(a, b, 2, padding, "shifted") ** 2)
  grad = jax.jit(jax.grad(f, argnums=(0, 1)))
  grads16 = grad(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  grads32 = grad(x, kernel)
  for g16, g32 in zip(grads16, grads32):
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(g16.astype(jnp.float32), g32, rtol=0.05,
                               atol=0.05 * float(jnp.abs(g32).max()))


def test_impl_selection_and_errors():
  assert layers.resolve_depthwise_impl("auto") == (
      "shifted" if jax.default_backend() == "cpu" else "xla")
  assert layers.resolve_depthwise_impl("xla") == "xla"
  with pytest.raises(ValueError, match="depthwise_impl must be one of"):
    layers.resolve_depthwise_impl("grouped")
  x = jnp.zeros((1, 8, 8, 4))
  with pytest.raises(ValueError, match=r"\[k, k, 1, C=4\]"):
    layers.depthwise_conv(x, jnp.zeros((3, 3, 4, 1)), 1, [(1, 1), (1, 1)], "shifted")
  with pytest.raises(ValueError, match="unknown depthwise impl"):
    layers.depthwise_conv(x, jnp.zeros((3, 3, 1, 4)), 1, [(1, 1), (1, 1)], "fast")


def test_depthwise_module_keeps_grouped_kernel_layout():
  for impl in IMPLS:
    module = layers.DepthwiseConv(kernel_size=5, strides=2, impl=impl)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 9, 9, 6)))
    assert variables["params"]["kernel"].shape == (5, 5, 1, 6)


@pytest.mark.parametrize("kernel_size,stride,in_features,padding,rewritten", [
    (1, 1, 5, "explicit", True),     # pointwise: [N*H*W, Cin] x [Cin, Cout]
    (3, 2, 3, "explicit", True),     # the stem: broadcast multiply-adds on CPU
    (3, 1, 2, "explicit", True),
    (1, 2, 40, "explicit", False),   # strided 1x1 with many inputs: left to XLA
    (3, 1, 5, "explicit", False),    # 45 > SHALLOW_CONV_MAX_DEPTH
    (1, 1, 5, "SAME", False),        # string padding: left to XLA
])
def test_conv_general_dilated_fast_matches_convolution(kernel_size, stride, in_features, padding,
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
  got = jax.value_and_grad(loss(layers.conv_general_dilated_fast), argnums=(0, 1))(x, kernel)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
  jaxpr = str(jax.make_jaxpr(loss(layers.conv_general_dilated_fast))(x, kernel))
  if jax.default_backend() == "cpu" or kernel_size == 1:
    assert ("conv_general_dilated" not in jaxpr) == rewritten


def test_models_agree_across_depthwise_impls():
  """A whole (narrow) network gives the same logits with every implementation."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  logits = []
  for impl in IMPLS:
    model = mj.create_model("mobilenet_v3_small", width_multiplier=0.35, num_classes=10,
                            depthwise_impl=impl, padding="symmetric")
    if not logits:  # the same parameters for every impl; eval_shape + numpy is faster than init
      shapes = jax.eval_shape(model.init, jax.random.key(1), x)
      rng = np.random.default_rng(0)
      variables = jax.tree.map(
          lambda s: jnp.asarray(rng.uniform(0.5, 1.0, s.shape) / np.sqrt(np.prod(s.shape[:-1])),
                                s.dtype), shapes)
    logits.append(jax.jit(model.apply)(variables, x))
  for got in logits[1:]:
    np.testing.assert_allclose(got, logits[0], rtol=1e-4, atol=1e-5)
