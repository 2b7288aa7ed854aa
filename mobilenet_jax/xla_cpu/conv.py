"""`lax.conv_general_dilated` with MobileNet's convolutions in the forms XLA:CPU runs fastest.

A drop-in for `nn.Conv(conv_general_dilated=...)`: depthwise convolutions as shifted multiply-adds
(`depthwise.py`), 1x1 convolutions as matmuls, the 3-channel stem as broadcast multiply-adds.
Anything else goes to `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from mobilenet_jax.xla_cpu.depthwise import depthwise_shifted, taps

Array = jax.Array


# Largest kh * kw * in_channels of a convolution run as broadcast multiply-adds on CPU
# (the stem: 3 * 3 * 3 = 27).
SHALLOW_CONV_MAX_DEPTH = 32


def _plain_conv_padding(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                        args: tuple[Any, ...], kwargs: dict[str, Any]
                        ) -> Optional[tuple[tuple[int, int], ...]]:
  """Explicit padding of a plain NHWC/HWIO convolution with equal strides, else None."""
  numbers = kwargs.get("dimension_numbers")
  if (args or lhs.ndim != 4 or rhs.ndim != 4 or numbers is None
      or (tuple(numbers.lhs_spec), tuple(numbers.rhs_spec), tuple(numbers.out_spec))
      != ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
      or kwargs.get("batch_group_count", 1) != 1
      or any(tuple(kwargs.get(k) or (1, 1)) != (1, 1) for k in ("lhs_dilation", "rhs_dilation"))
      or len(set(window_strides)) != 1):
    return None
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if isinstance(padding, str):
    return None
  return tuple(tuple(int(v) for v in p) for p in padding)


def _taps_times_kernel(x: Array, kernel: Array, stride: int,
                       padding: Sequence[tuple[int, int]]) -> Array:
  """sum over taps (i, j) and input channels c of window_ij(x)[..., c] * kernel[i, j, c, :]."""
  out = None
  for i, j, tap in taps(x, kernel.shape[:2], stride, padding):
    tap = tap.astype(jnp.promote_types(tap.dtype, jnp.float32))
    for c in range(kernel.shape[2]):
      term = tap[..., c:c + 1] * kernel[i, j, c].astype(tap.dtype)
      out = term if out is None else out + term
  return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shallow_conv(x: Array, kernel: Array, stride: int,
                  padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  return _taps_times_kernel(x, kernel, stride, padding)


def _shallow_conv_fwd(x, kernel, stride, padding):
  return _taps_times_kernel(x, kernel, stride, padding), (x, kernel)


def _shallow_conv_bwd(stride, padding, residuals, g):
  """Kernel gradient as one matmul of the im2col patches with g; the input gradient (unused, and
  so removed by XLA, when x is the image) through lax's convolution transpose."""
  x, kernel = residuals
  kh, kw, in_features, out_features = kernel.shape
  patches = jnp.concatenate([tap for _, _, tap in taps(x, (kh, kw), stride, padding)], axis=-1)
  dk = jax.lax.dot_general(patches.reshape(-1, kh * kw * in_features),
                           g.reshape(-1, out_features), (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)
  conv = lambda x: jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  (dx,) = jax.vjp(conv, x)[1](g)
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_shallow_conv.defvjp(_shallow_conv_fwd, _shallow_conv_bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         *args: Any, materialize_gradient: bool = True, **kwargs: Any) -> Array:
  """`lax.conv_general_dilated`, with MobileNet's convolutions rewritten for XLA:CPU.

  - depthwise (`feature_group_count` = input channels, one filter each): `depthwise_shifted`, k*k
    strided windows times a per-channel weight (XLA:CPU runs a grouped convolution group by group);
    `materialize_gradient` is its option of the same name.
  - 1x1 stride 1: a `[N*H*W, Cin] x [Cin, Cout]` matmul. XLA:CPU sends a convolution to a generic
    kernel but a dot to its tuned GEMM.
  - kxk with k*k*Cin <= SHALLOW_CONV_MAX_DEPTH (the 3-channel stem): k*k*Cin broadcast multiply-adds
    in one fused loop (faster than the convolution and than im2col + matmul: docs/performance.md);
    its kernel gradient is one im2col matmul (custom VJP).
  """
  groups = kwargs.get("feature_group_count", 1)
  pads = _plain_conv_padding(lhs, rhs, window_strides, padding, args, kwargs)
  if pads is None:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
  kh, kw, in_features, out_features = rhs.shape
  if groups > 1:
    if (groups == lhs.shape[-1] == out_features and in_features == 1
        and kwargs.get("preferred_element_type") is None):
      return depthwise_shifted(lhs, rhs, window_strides[0], pads, materialize_gradient)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
  if (kh, kw) == (1, 1) and window_strides[0] == 1 and not any(map(any, pads)):
    # As a 2-D matmul, so the weight gradient is `x^T g` on [N*H*W, C] matrices: with 4-D
    # operands XLA:CPU's dot canonicalisation transposes the activation gradient to [C, N*H*W].
    n, h, w, _ = lhs.shape
    out = jax.lax.dot_general(lhs.reshape(n * h * w, in_features), rhs.reshape(in_features, -1),
                              (((1,), (0,)), ((), ())), precision=kwargs.get("precision"),
                              preferred_element_type=kwargs.get("preferred_element_type"))
    return out.reshape(n, h, w, out_features)
  if (kh * kw * in_features <= SHALLOW_CONV_MAX_DEPTH
      and kwargs.get("preferred_element_type") is None):
    return _shallow_conv(lhs, rhs, window_strides[0], pads)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
