"""The CPU inference engine: a folded MobileNet as one XLA:CPU program, run in micro-batches.

`cpu_inference_function(model, variables)` folds BatchNorm into the convolutions (`models/fold.py`)
and builds its own forward program from the network's walk (`models.spec.network_layers`), the
modules the network builds for each layer (`MobileNet.layer`: their activations, strides and
squeeze-excite gate) and the folded weights; the rearrangements below are this program's, not
fields of the modules. Same logits as `model.apply(variables, images, train=False)` up to float rounding
(tests/test_inference.py). What it does for XLA:CPU, each kept where an A/B of
`python experiments/ab_inference.py` showed a gain on some model, and applied only where it helped
(the figures: docs/performance.md):

- **Micro-batches** of `CPU_MICRO_BATCH` images inside one compiled program (`lax.map`): a batch-8
  V2 layer (at most 8x112x112x96 floats) stays near the L3 cache.
- **Micro-batches side by side**: each loop step computes `CPU_SIDE_BY_SIDE` of them independently,
  and XLA:CPU overlaps their single-core element-wise and depthwise fusions (one loop layout
  serves every network).
- **The stem stored once** where the first block's depthwise convolution is its only reader (V1,
  V2): XLA had computed the stem's 27 multiply-adds twice, in the padding pass and in the depthwise
  pass.
- **Padding before the expansion** in ReLU6 blocks whose input is at least
  `PAD_BEFORE_EXPANSION_MIN_SIZE` (V2): the narrow input is padded, and the expanded border zeroed
  after the activation, so bias and activation fuse into the depthwise pass instead of a pass
  writing the widest tensor of the block again, padded (not with hard-swish, whose activation
  would be recomputed for each tap).
- **5x5 squeeze-and-excite inputs stored once** at `SE_INPUT_MIN_SIZE` and more (V3-Large's 28x28
  blocks): SE reads the depthwise output twice, and XLA had fused the whole 25-tap convolution into
  the gating pass as well.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from mobilenet_jax.models.blocks import InvertedResidual
from mobilenet_jax.models.builder import MobileNet
from mobilenet_jax.models.fold import fold_batch_norm
from mobilenet_jax.models.layers import Activation, global_average_pool, spatial_padding
from mobilenet_jax.models.spec import LayerKind, network_layers
from mobilenet_jax.xla_cpu.conv import conv_general_dilated
from mobilenet_jax.xla_cpu.depthwise import pad_spatial, zero_border
from mobilenet_jax.xla_cpu.fusion_barrier import materialized

Array = jax.Array
Params = Mapping[str, Any]

CPU_MICRO_BATCH = 8
CPU_SIDE_BY_SIDE = 2
PAD_BEFORE_EXPANSION_MIN_SIZE = 56
SE_INPUT_MIN_SIZE = 28


def stored_once(x: Array) -> Array:
  """`x` computed into a buffer of its own (see fusion_barrier.materialized)."""
  return materialized(x, x[0, 0, 0, 0])


def loop_layout(batch: int, micro_batch: int, side_by_side: int) -> tuple[int, int]:
  """`(micro_batch, side_by_side)` as the program runs a batch of `batch` images: `(0, 1)` when it
  runs the batch whole; side by side only when a full step of `micro_batch * side_by_side` images
  fits in the batch."""
  if not micro_batch or batch <= micro_batch:
    return 0, 1
  return micro_batch, side_by_side if batch >= micro_batch * side_by_side else 1


class _Program:
  """The folded network's forward pass for one batch: the network's own walk (`network_layers`) and
  layer modules (`MobileNet.layer`), whose fields (activations, strides, squeeze-excite gate, ...)
  it reads, computed from the folded weights with the rearrangements above."""

  def __init__(self, model: MobileNet, store_stem: bool, pad_before_expansion_min_size: int,
               se_input_min_size: int):
    self.store_stem = store_stem
    self.pad_first_min = pad_before_expansion_min_size
    self.se_input_min = se_input_min_size
    self.model = model
    self.spec = model.network_spec()
    self.dtype = model.dtype
    self.padding = model.padding

  def cast(self, *arrays: Array) -> list[Array]:
    dtype = self.dtype or jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]

  def conv(self, p: Params, x: Array, k: int, stride: int, activation: Optional[Activation],
           depthwise: bool = False, pads: Optional[list[tuple[int, int]]] = None) -> Array:
    """Folded conv + bias + activation (a `ConvNormAct` with its BatchNorm folded)."""
    x, kernel, bias = self.cast(x, p["conv"]["kernel"], p["norm"]["bias"])
    if pads is None:
      pads = spatial_padding(x, k, stride, self.padding, depthwise)
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    y = conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=numbers,
                             feature_group_count=x.shape[-1] if depthwise else 1) + bias
    return y if activation is None else activation(y)

  def dense(self, p: Params, x: Array) -> Array:
    x, kernel, bias = self.cast(x, p["kernel"], p["bias"])
    return x @ kernel + bias

  def squeeze_excite(self, p: Params, x: Array, block: InvertedResidual) -> Array:
    """`SqueezeExcite` with the block's activation and gate."""
    s = global_average_pool(x)
    s = block.se_gate(self.dense(p["expand"], block.se_activation(self.dense(p["reduce"], s))))
    return x * s[:, None, None, :].astype(x.dtype)

  def inverted_residual(self, p: Params, x: Array, block: InvertedResidual) -> Array:
    activation, k, stride = block.activation, block.kernel_size, block.strides
    shortcut, in_features = x, x.shape[-1]
    pads = spatial_padding(x, k, stride, self.padding, depthwise=True)
    if block.expanded_features != in_features:
      if activation is jax.nn.relu6 and 0 < self.pad_first_min <= min(x.shape[1:3]):
        x = zero_border(self.conv(p["expand"], pad_spatial(x, pads), 1, 1, activation), pads)
        pads = [(0, 0), (0, 0)]
      else:
        x = self.conv(p["expand"], x, 1, 1, activation)
    x = self.conv(p["depthwise"], x, k, stride, activation, depthwise=True, pads=pads)
    if block.use_se:
      if k >= 5 and 0 < self.se_input_min <= min(x.shape[1:3]):
        x = stored_once(x)
      x = self.squeeze_excite(p["se"], x, block)
    x = self.conv(p["project"], x, 1, 1, None)
    return x + shortcut if stride == 1 and in_features == block.features else x

  def stem_read_only_by_first_depthwise(self) -> bool:
    """The first block starts with a stride-1 depthwise convolution and has no shortcut (V1, V2).
    Where a shortcut also reads the stem (V3-Large) its output is stored anyway; at stride 2
    (V3-Small) no tap is the unpadded tensor; in both a buffer of its own only costs."""
    stem, first = self.spec.stem, self.spec.blocks[0]
    if first.stride != 1:
      return False
    return first.kind == LayerKind.SEPARABLE or (first.kind == LayerKind.INVERTED_RESIDUAL
                                                 and first.expanded_features == stem.features
                                                 and first.features != stem.features)

  def __call__(self, params: Params, x: Array) -> Array:
    spec, model = self.spec, self.model
    if self.dtype is not None:
      x = x.astype(self.dtype)
    norm = model.norm(train=False)
    for layer in network_layers(spec, x.shape[-1]):
      p, module = params[layer.name], model.layer(layer, norm, len(spec.blocks))
      if layer.kind == LayerKind.CONV:
        x = self.conv(p, x, module.kernel_size, module.strides, module.activation)
        if layer.name == "stem" and self.store_stem and self.stem_read_only_by_first_depthwise():
          x = stored_once(x)
      elif layer.kind == LayerKind.SEPARABLE:
        x = self.conv(p["depthwise"], x, module.kernel_size, module.strides, module.activation,
                      True)
        x = self.conv(p["pointwise"], x, 1, 1, module.activation)
      else:
        x = self.inverted_residual(p, x, module)
    x = global_average_pool(x)
    if spec.head_features:
      x = model.head_activation()(self.dense(params["head"], x))
    return x if model.num_classes == 0 else self.dense(params["classifier"], x)


def _check_int(name: str, value: Any, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def cpu_inference_function(model: MobileNet, variables: Mapping[str, Any], *,
                           micro_batch: int = CPU_MICRO_BATCH, side_by_side: int = CPU_SIDE_BY_SIDE,
                           store_stem: bool = True,
                           pad_before_expansion_min_size: int = PAD_BEFORE_EXPANSION_MIN_SIZE,
                           se_input_min_size: int = SE_INPUT_MIN_SIZE
                           ) -> tuple[Callable[[Any, Array], Array], dict[str, Any]]:
  """Returns `(predict, predict_variables)`, `predict(predict_variables, images) -> logits`, jitted.

  Batches larger than `micro_batch` run as micro-batches (0: whole batches), `side_by_side` of them
  per loop step; any batch size works (the rest after the last full step runs whole). The other
  options set the rearrangements of the module docstring (`store_stem=False` and min sizes of 0 turn
  them off, for A/B runs); every setting gives the same logits.
  """
  _check_int("micro_batch", micro_batch, 0)
  _check_int("side_by_side", side_by_side, 1)
  _check_int("pad_before_expansion_min_size", pad_before_expansion_min_size, 0)
  _check_int("se_input_min_size", se_input_min_size, 0)
  if not isinstance(store_stem, bool):
    raise ValueError(f"store_stem must be True or False, got {store_stem!r}")
  _, folded = fold_batch_norm(model, variables)
  program = _Program(model, store_stem, pad_before_expansion_min_size, se_input_min_size)

  def apply(variables, images):
    return program(variables["params"], images)

  def predict(variables, images):
    batch = images.shape[0]
    size, count = loop_layout(batch, micro_batch, side_by_side)
    if not size:
      return apply(variables, images)
    per_step = size * count
    whole = batch - batch % per_step
    chunks = images[:whole].reshape(whole // per_step, count, size, *images.shape[1:])
    step = lambda chunk: jnp.stack([apply(variables, c) for c in chunk])  # noqa: E731
    out = jax.lax.map(step, chunks)
    out = out.reshape(whole, *out.shape[3:])
    if whole < batch:
      out = jnp.concatenate([out, apply(variables, images[whole:])])
    return out
  return jax.jit(predict), folded
