"""Depthwise convolution as k*k shifted multiply-adds, with its gradient written the same way.

XLA:CPU runs a grouped convolution (`feature_group_count=C`) one group at a time; nine strided
windows times a per-channel weight, which XLA fuses into one loop nest, are many times faster
(docs/performance.md has the figures and their commands). XLA's transpose of the grouped
convolution (its gradient) is as slow as its forward, so the gradient is a custom VJP written again as shifted sums (`_shifted_input_grad`,
`_shifted_kernel_grad`). Equal to `lax.conv_general_dilated` up to float summation order, forward and
backward (tests/test_xla_cpu_kernels.py).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from mobilenet_jax.xla_cpu.fusion_barrier import materialized

Array = jax.Array


def pad_spatial(x: Array, padding: Sequence[tuple[int, int]]) -> Array:
  """Zero-pads (or, for negative amounts, crops) the H and W axes of NHWC `x`."""
  (top, bottom), (left, right) = padding
  return jax.lax.pad(x, jnp.zeros((), x.dtype),
                     ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))


def zero_border(x: Array, padding: Sequence[tuple[int, int]]) -> Array:
  """`x` with the `padding` rows and columns at its H and W borders set to zero."""
  (top, bottom), (left, right) = padding
  height, width = x.shape[1], x.shape[2]
  rows = jax.lax.broadcasted_iota(jnp.int32, (1, height, width, 1), 1)
  cols = jax.lax.broadcasted_iota(jnp.int32, (1, height, width, 1), 2)
  inside = (rows >= top) & (rows < height - bottom) & (cols >= left) & (cols < width - right)
  return jnp.where(inside, x, jnp.zeros((), x.dtype))


def _output_size(size: int, kernel_size: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel_size) // stride + 1


def taps(x: Array, kernel_hw: tuple[int, int], stride: int,
          padding: Sequence[tuple[int, int]]):
  """Yields `(i, j, tap)`: the strided window of padded `x` that kernel tap (i, j) multiplies."""
  kh, kw = kernel_hw
  out_h = _output_size(x.shape[1], kh, stride, padding[0])
  out_w = _output_size(x.shape[2], kw, stride, padding[1])
  xp = pad_spatial(x, padding)
  for i in range(kh):
    for j in range(kw):
      yield i, j, jax.lax.slice(xp, (0, i, j, 0),
                                (xp.shape[0], i + (out_h - 1) * stride + 1,
                                 j + (out_w - 1) * stride + 1, xp.shape[3]),
                                (1, stride, stride, 1))


def _shifted_sum(x: Array, kernel: Array, stride: int, padding: Sequence[tuple[int, int]]) -> Array:
  """sum over taps (i, j) of window_ij(x) * kernel[i, j]: one fused elementwise loop in XLA."""
  out = None
  for i, j, tap in taps(x, kernel.shape[:2], stride, padding):
    term = tap * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


def _shifted_input_grad(g: Array, kernel: Array, stride: int, padding: Sequence[tuple[int, int]],
                        in_hw: tuple[int, int]) -> Array:
  """d loss / d x of `_shifted_sum`, itself computed as stride-1 shifted sums (no scatter).

  With x_pad[p] = x[p - pad], output y[h] = sum_i x_pad[h*s + i] k[i]: the input row a receives
  g[h] k[i] for every h*s + i = a + pad. Splitting a by its phase a mod s (a = u*s + phi), the taps
  that reach it are i = m*s + rho with rho = (phi + pad) mod s, and
  dx[u*s + phi] = sum_m g[u + q - m] k[m*s + rho], q = (phi + pad - rho) / s:
  a stride-1 correlation of g with the flipped sub-kernel k[rho::s][::-1]. At stride 1 this is the
  usual "full convolution with the flipped kernel"; at stride s the s*s phases are interleaved, so
  no zero-dilated gradient is ever built.
  """
  s = stride
  phase_sizes = [-(-size // s) for size in in_hw]  # rows u of each phase, rounded up
  phases = []
  for phi_h in range(s):
    row = []
    for phi_w in range(s):
      sub_pads, sub_index = [], []
      for axis, phi in ((0, phi_h), (1, phi_w)):
        pad_before = padding[axis][0]
        rho = (phi + pad_before) % s
        taps = len(range(rho, kernel.shape[axis], s))
        q = (phi + pad_before - rho) // s
        low = taps - 1 - q
        high = phase_sizes[axis] + taps - 1 - g.shape[1 + axis] - low
        sub_pads.append((low, high))
        sub_index.append(slice(rho, None, s))
      sub_kernel = kernel[sub_index[0], sub_index[1]][::-1, ::-1]
      if sub_kernel.shape[0] == 0 or sub_kernel.shape[1] == 0:
        row.append(jnp.zeros((g.shape[0], *phase_sizes, g.shape[3]), g.dtype))
      else:
        row.append(_shifted_sum(g, sub_kernel, 1, sub_pads))
    phases.append(row)
  if s == 1:
    return phases[0][0]
  n, c = g.shape[0], g.shape[3]
  interleaved = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
  interleaved = interleaved.reshape(n, phase_sizes[0] * s, phase_sizes[1] * s, c)
  return interleaved[:, :in_hw[0], :in_hw[1]]


# Row-group sizes tried in order: one that divides the output height avoids padding g, which costs
# more than a smaller group (docs/performance.md).
_ROW_GROUPS = (14, 16, 12, 15, 13, 11, 10, 9, 8, 7)


def _row_group(out_h: int) -> int:
  if out_h <= 16:
    return out_h
  return next((r for r in _ROW_GROUPS if out_h % r == 0), 14)


def _shifted_kernel_grad(x: Array, g: Array, kernel_shape: Sequence[int], stride: int,
                         padding: Sequence[tuple[int, int]], dtype: Any,
                         row_group: Optional[int] = None) -> Array:
  """d loss / d kernel[i, j, 0, c] = sum over n, h, w of window_ij(x) * g, accumulated in float32.

  Per tap, one fused elementwise pass sums the products of `row_group` consecutive output rows
  (a tensor `row_group` times smaller than g), and a single reduction finishes all taps. Both
  obvious forms are slower on XLA:CPU: one reduction per tap materialises every shifted window of
  x, and stacking the k*k full-size products materialises k*k activations.
  """
  kh, kw = kernel_shape[:2]
  n, out_h, out_w, channels = g.shape
  row_group = row_group or _row_group(out_h)
  groups = -(-out_h // row_group)
  g = pad_spatial(g.astype(jnp.float32), ((0, groups * row_group - out_h), (0, 0)))
  x = x.astype(jnp.float32)
  # x rows reached by the padded output rows, (groups * row_group - 1) * stride + kh in all.
  (top, bottom), (left, right) = padding
  bottom += max(0, (groups * row_group - 1) * stride + kh - (x.shape[1] + top + bottom))
  xp = pad_spatial(x, ((top, bottom), (left, right)))
  partial_sums = []
  for i in range(kh):
    for j in range(kw):
      acc = None
      for r in range(row_group):
        rows = jax.lax.slice(xp, (0, r * stride + i, j, 0),
                             (n, r * stride + i + (groups - 1) * row_group * stride + 1,
                              j + (out_w - 1) * stride + 1, channels),
                             (1, row_group * stride, stride, 1))
        grad_rows = jax.lax.slice(g, (0, r, 0, 0), (n, r + (groups - 1) * row_group + 1, out_w,
                                                    channels), (1, row_group, 1, 1))
        acc = rows * grad_rows if acc is None else acc + rows * grad_rows
      partial_sums.append(acc)  # [n, groups, out_w, channels]
  grad = jnp.sum(jnp.stack(partial_sums, axis=3), axis=(0, 1, 2))  # [kh * kw, channels]
  return grad.reshape(kernel_shape).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_shifted(x: Array, kernel: Array, stride: int,
                      padding: tuple[tuple[int, int], tuple[int, int]],
                      materialize_gradient: bool = True) -> Array:
  """Depthwise convolution of NHWC `x` with a `[k, k, 1, C]` kernel and explicit padding.

  materialize_gradient: in the backward pass the output gradient g is computed once into a buffer
  of its own before the k*k gradient passes read it. XLA:CPU otherwise fuses the element-wise ops
  that produce g (the BatchNorm, activation and SE-gate gradients) into every one of those passes
  and recomputes them there (`python experiments/ab_train_step.py --change materialized_gradient`
  measures the difference; docs/performance.md).
  """
  return _shifted_sum(x, kernel, stride, padding)


def _depthwise_shifted_fwd(x, kernel, stride, padding, materialize_gradient):
  return _shifted_sum(x, kernel, stride, padding), (x, kernel)


def _depthwise_shifted_bwd(stride, padding, materialize_gradient, residuals, g):
  x, kernel = residuals
  if materialize_gradient:
    g = materialized(g, kernel[0, 0, 0, 0])
  dx = _shifted_input_grad(g, kernel, stride, padding, (x.shape[1], x.shape[2]))
  dk = _shifted_kernel_grad(x, g, kernel.shape, stride, padding, kernel.dtype)
  return dx.astype(x.dtype), dk


depthwise_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd)
