"""Layers shared by every MobileNet: channel rounding, padding, conv+norm+act, depthwise conv, SE.

Imports only jax and flax, so the model code can be dropped into any Flax project.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilenet_jax.models.fusion_barrier import materialized
from mobilenet_jax.models.norm_activation import BatchNormActivation, fusible_batch_norm

Array = jax.Array
ModuleDef = Any
Activation = Callable[[Array], Array]

PADDING_MODES = ("same", "symmetric")
DEPTHWISE_IMPLS = ("auto", "xla", "shifted")

# He-normal on fan-out (torchvision/timm MobileNet init; V1/V2 papers do not specify one).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Classifier init of torchvision MobileNetV2/V3: normal(0, 0.01), zero bias.
classifier_kernel_init = nn.initializers.normal(0.01)

ACTIVATIONS: dict[str, Activation] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hard_swish": jax.nn.hard_swish,
    "identity": lambda x: x,
}


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
  """Round a channel count to the nearest multiple of `divisor`, never going down by more than 10%.

  The rule of the TF-slim MobileNet code, copied by every reference library (Keras `_depth`,
  torchvision `_make_divisible`, timm `make_divisible`); see ANCHORS-models.md section 2.1.
  """
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return int(rounded)


def padding_for(size: int, kernel_size: int, stride: int, mode: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis.

  "same": TensorFlow/Keras SAME, the extra pixel of an even input at stride 2 goes after (bottom/right).
  "symmetric": PyTorch's `(k - 1) // 2` on both sides (torchvision, timm non-`tf_` weights).
  The two agree at stride 1 and odd kernels; ported weights need the matching one.
  "valid" (no padding) is for layers whose input arrives already padded (`zero_border`).
  """
  if mode == "valid":
    return 0, 0
  if mode == "symmetric":
    pad = (kernel_size - 1) // 2
    return pad, pad
  if mode == "same":
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
  raise ValueError(f"padding must be one of {PADDING_MODES}, got {mode!r}")


def spatial_padding(x: Array, kernel_size: int, stride: int, mode: str) -> list[tuple[int, int]]:
  return [padding_for(x.shape[1], kernel_size, stride, mode),
          padding_for(x.shape[2], kernel_size, stride, mode)]


def bind_norm(norm: ModuleDef, train: bool) -> ModuleDef:
  """Binds `use_running_average=not train` into a BatchNorm factory that has not set it yet.

  Other norm factories (GroupNorm, LayerNorm, ...) are returned unchanged, so blocks accept any
  normalisation while the `train` flag keeps its usual Flax meaning for BatchNorm.
  """
  target, keywords = norm, {}
  while isinstance(target, functools.partial):
    keywords = {**target.keywords, **keywords}
    target = target.func
  if (isinstance(target, type) and issubclass(target, nn.BatchNorm)
      and keywords.get("use_running_average") is None):
    return functools.partial(norm, use_running_average=not train)
  return norm


def resolve_depthwise_impl(impl: str) -> str:
  """'auto' picks the fastest depthwise implementation for the default backend.

  XLA:CPU runs a grouped convolution one group at a time (about 10x slower than nine shifted
  multiply-adds on a 3x3 layer, see ANCHORS-speed.md); GPUs and TPUs have native depthwise kernels.
  """
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
  if impl == "auto":
    return "shifted" if jax.default_backend() == "cpu" else "xla"
  return impl


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


def _taps(x: Array, kernel_hw: tuple[int, int], stride: int,
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
  for i, j, tap in _taps(x, kernel.shape[:2], stride, padding):
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


# Row-group sizes tried in order: one that divides the output height avoids padding g (on V2's
# 14x14x384 layers 8 rows, padded to 16, took 17 ms where 14 rows took 6; experiments in the commit).
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
  x, and stacking the k*k full-size products materialises k*k activations (about 1.3x and 1.8x the
  time of this form on a 32x56x56x144 layer).
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifted(x: Array, kernel: Array, stride: int,
                       padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  return _shifted_sum(x, kernel, stride, padding)


def _depthwise_shifted_fwd(x, kernel, stride, padding):
  return _shifted_sum(x, kernel, stride, padding), (x, kernel)


def _materialized(g: Array, kernel: Array) -> Array:
  """`g`, computed once into a buffer of its own before the k*k gradient passes read it.

  XLA:CPU otherwise fuses the elementwise ops that produce g (the BatchNorm, activation and SE
  gate gradients) into every one of those passes and recomputes them there. Training steps at
  batch 32, 224, without -> with, medians of 6 interleaved steps on the 2-core CPU
  (`python experiments/ab_train_step.py --change materialized_gradient`): V1 1362 -> 1277 ms, V2 1333 -> 1233,
  V3-Large 890 -> 805, V3-Small 303 -> 268; gradients equal to 3e-8.
  On a single CPU device only (see fusion_barrier.materialized).
  """
  return materialized(g, kernel[0, 0, 0, 0])


def _depthwise_shifted_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  g = _materialized(g, kernel)
  dx = _shifted_input_grad(g, kernel, stride, padding, (x.shape[1], x.shape[2]))
  dk = _shifted_kernel_grad(x, g, kernel.shape, stride, padding, kernel.dtype)
  return dx.astype(x.dtype), dk


_depthwise_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd)


def depthwise_conv(x: Array, kernel: Array, stride: int,
                   padding: Sequence[tuple[int, int]], impl: str = "xla") -> Array:
  """Depthwise 2-D convolution of NHWC `x` with a `[k, k, 1, C]` kernel (Flax grouped layout).

  impl="xla": `lax.conv_general_dilated` with `feature_group_count=C`.
  impl="shifted": the same sum written as k*k strided windows times a per-channel weight, which
  XLA fuses into one loop nest; its gradient (a custom VJP) is again written as shifted sums
  (`_shifted_input_grad`, `_shifted_kernel_grad`) instead of XLA's scatter-like transposes.
  Equal to the grouped convolution up to float summation order, forward and backward.
  """
  if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
    raise ValueError(f"depthwise kernel must be [k, k, 1, C={x.shape[-1]}], got {kernel.shape}")
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=list(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  if impl == "shifted":
    return _depthwise_shifted(x, kernel, stride, padding)
  raise ValueError(f"unknown depthwise impl {impl!r}; choose one of {DEPTHWISE_IMPLS[1:]}")


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
      or kwargs.get("feature_group_count", 1) != 1 or kwargs.get("batch_group_count", 1) != 1
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
  for i, j, tap in _taps(x, kernel.shape[:2], stride, padding):
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
  patches = jnp.concatenate([tap for _, _, tap in _taps(x, (kh, kw), stride, padding)], axis=-1)
  dk = jax.lax.dot_general(patches.reshape(-1, kh * kw * in_features),
                           g.reshape(-1, out_features), (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)
  conv = lambda x: jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  (dx,) = jax.vjp(conv, x)[1](g)
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_shallow_conv.defvjp(_shallow_conv_fwd, _shallow_conv_bwd)


def conv_general_dilated_fast(lhs: Array, rhs: Array, window_strides: Sequence[int],
                              padding: Any, *args: Any, **kwargs: Any) -> Array:
  """`lax.conv_general_dilated` with MobileNet's convolutions in the forms XLA runs fastest.

  - 1x1 stride 1: a `[N*H*W, Cin] x [Cin, Cout]` matmul, on every backend. XLA:CPU sends a
    convolution to a generic kernel but a dot to its tuned GEMM (1x1 layers measured 2-5x faster);
    on GPU/TPU both become the same GEMM.
  - kxk with k*k*Cin <= SHALLOW_CONV_MAX_DEPTH (the 3-channel stem), on CPU: k*k*Cin broadcast
    multiply-adds in one fused loop (V2 stem at batch 32: 37 ms as a convolution, 19 ms as
    im2col + matmul, 11 ms this way); its kernel gradient is one im2col matmul (custom VJP).
  Anything else (grouped, dilated, other layouts, deep kxk) goes to `lax.conv_general_dilated`
  unchanged. Drop-in for `nn.Conv(conv_general_dilated=...)`.
  """
  pads = _plain_conv_padding(lhs, rhs, window_strides, padding, args, kwargs)
  kh, kw, in_features, out_features = rhs.shape if pads is not None else (0, 0, 0, 0)
  if pads is not None and (kh, kw) == (1, 1) and window_strides[0] == 1 and not any(
      map(any, pads)):
    # As a 2-D matmul, so the weight gradient is `x^T g` on [N*H*W, C] matrices: with 4-D
    # operands XLA:CPU's dot canonicalisation transposes the activation gradient to [C, N*H*W].
    n, h, w, _ = lhs.shape
    out = jax.lax.dot_general(lhs.reshape(n * h * w, in_features), rhs.reshape(in_features, -1),
                              (((1,), (0,)), ((), ())), precision=kwargs.get("precision"),
                              preferred_element_type=kwargs.get("preferred_element_type"))
    return out.reshape(n, h, w, out_features)
  if (pads is not None and kh * kw * in_features <= SHALLOW_CONV_MAX_DEPTH
      and jax.default_backend() == "cpu" and kwargs.get("preferred_element_type") is None):
    return _shallow_conv(lhs, rhs, window_strides[0], pads)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)


class DepthwiseConv(nn.Module):
  """Depthwise kxk convolution (one filter per channel, V1 paper section 3.1), no bias.

  Its parameter `kernel` has Flax's grouped-conv layout `[k, k, 1, C]`, whatever `impl` computes it.
  """
  kernel_size: int = 3
  strides: int = 1
  padding: str = "same"
  impl: str = "auto"
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = conv_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, 1, channels), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    pads = spatial_padding(x, self.kernel_size, self.strides, self.padding)
    return depthwise_conv(x, kernel, self.strides, pads, resolve_depthwise_impl(self.impl))


class ConvNormAct(nn.Module):
  """Convolution (no bias), normalisation, optional activation: the unit every MobileNet is built of.

  `norm` is a factory (e.g. `functools.partial(nn.BatchNorm, use_running_average=not train)`), so
  BatchNorm can be swapped for another normalisation. `activation=None` is linear (V2 projection).
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  norm: ModuleDef = nn.BatchNorm
  activation: Optional[Activation] = jax.nn.relu6
  padding: str = "same"
  depthwise_impl: str = "auto"
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.depthwise:
      if self.features != x.shape[-1]:
        raise ValueError(f"a depthwise conv keeps the channel count: in {x.shape[-1]}, "
                         f"asked for {self.features}")
      x = DepthwiseConv(self.kernel_size, self.strides, self.padding, self.depthwise_impl,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    else:
      pads = spatial_padding(x, self.kernel_size, self.strides, self.padding)
      x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), self.strides, padding=pads,
                  use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                  kernel_init=conv_kernel_init, conv_general_dilated=conv_general_dilated_fast,
                  name="conv")(x)
    batch_norm = fusible_batch_norm(self.norm)
    if batch_norm is not None:  # the same BatchNorm, with a fused gradient (norm_activation.py)
      return BatchNormActivation(**batch_norm, activation=self.activation, name="norm")(x)
    x = self.norm(name="norm")(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


class SqueezeExcite(nn.Module):
  """Squeeze-and-excite as used by MobileNetV3 (V3 paper section 5.3, Figure 4).

  Global average pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias), hard-sigmoid gate.
  The reduced width is `make_divisible(channels * se_ratio, 8)` of the block's *expanded* channels,
  as in every V3 reference (ANCHORS-models.md section 2.3). 1x1 convs on a 1x1 map are Dense layers.
  """
  reduced_features: Optional[int] = None
  se_ratio: float = 0.25
  divisor: int = 8
  activation: Activation = jax.nn.relu
  gate: Activation = jax.nn.hard_sigmoid
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    reduced = self.reduced_features or make_divisible(channels * self.se_ratio, self.divisor)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    # The mean is taken in float32 so a bf16 network pools accurately.
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    s = self.activation(dense(reduced, name="reduce")(s))
    s = self.gate(dense(channels, name="expand")(s))
    return x * s.astype(x.dtype)


def global_average_pool(x: Array) -> Array:
  """Mean over H and W, computed in float32 and returned in the input dtype."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
