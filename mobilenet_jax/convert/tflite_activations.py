"""A quantized `.tflite` file's 8-bit arithmetic, applied to the converted float model.

A quantized TFLite model stores every activation as an 8-bit integer: each operator (convolution
with its bias and fused ReLU6, residual addition, average pool, classifier) computes on integers,
then rounds its output to its tensor's grid `scale * (q - zero_point)`, q in 0..255 (or
-128..127), clipping at the ends. That rounding is part of the function a quantization-aware
trained file computes (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", section 2.2: training inserts the same rounding).
The plain float model leaves it out, so on images whose top classes are close the two disagree.

`eight_bit_apply` (`tflite_eight_bit.py`) rounds each of our layers' outputs to the grid of the
file's tensor it stands for, from outside the model through Flax's method interception (the
model's code is unchanged): the input, every conv-norm-activation unit, every residual sum, the pooled vector the classifier
reads, and the logits. It rounds as LiteRT's CPU kernels do (XNNPACK; TFLite's reference kernel
for the average pool), so a value that lies near a half step goes the same way: a convolution's
int32 sum times a float32 multiplier, to nearest even; a residual addition in 21-bit fixed point,
half up; the average pool half away from zero. Checked on six released files: every tensor and
logit equals LiteRT's.

Covered: V1 and V2 graphs (convolutions, residual additions, average pooling, classifier). V3's
hard-swish and squeeze-excite compute further rounded tensors in between; such files are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from mobilenet_jax.convert.assemble import ConversionError

# Operators whose 8-bit outputs the layers below reproduce; the shape-only ones keep their input's
# grid, QUANTIZE re-expresses a grid (uint8 input -> int8) and SOFTMAX comes after the logits.
COVERED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D",
               "MEAN", "RESHAPE", "SQUEEZE", "PAD", "QUANTIZE", "DEQUANTIZE", "SOFTMAX"}
INPUT, CLASSIFIER_INPUT = "<input>", "classifier<input>"


@dataclasses.dataclass(frozen=True)
class Grid:
  """Values a * scale * (q - zero_point) + b for integers q in [low, high] (a, b: an affine map
  from the file's tensor to our model's values, identity except at the input)."""
  tensor: int          # the file's tensor (index) whose values these are
  scale: float
  zero_point: int
  low: int
  high: int
  a: float = 1.0
  b: float = 0.0
  # An average of `mean_of` stored integers, rounded half away from zero (TFLite's integer
  # AVERAGE_POOL_2D: (sum + n/2) / n); otherwise half to even, as LiteRT's requantization.
  mean_of: int = 0
  # A convolution's output: its int32 sum (bias included; in units of `sum_step`, per output
  # channel) times the float32 `multiplier` input_scale * kernel_scale / output_scale, the product
  # rounded in float32 to nearest even (XNNPACK's "fp32" requantization, src/params-init.c).
  sum_step: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)
  multiplier: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)
  # A residual sum: (grid of the block's input, grid of its projection), added as XNNPACK's
  # qs8/qu8 vadd does: each integer times a fixed-point multiplier lrint(its scale / the output
  # scale * 2^shift), shift = 20 - the larger ratio's binary exponent, rounded half up.
  add_of: Optional[tuple["Grid", "Grid"]] = None

  def round_sum(self, shortcut, total):
    """The residual sum `total` = shortcut + projection, rounded as the file's ADD computes it."""
    import jax.numpy as jnp

    f32 = np.float32
    a, b = self.add_of
    to_output = [f32(f32(g.scale) / f32(self.scale)) for g in (a, b)]
    exponent = int(np.array(max(to_output), f32).view(np.uint32) >> 23) - 127
    shift = 20 - exponent
    a_times, b_times = (float(np.rint(np.float64(m) * 2.0 ** shift)) for m in to_output)
    qa, qb = jnp.round(shortcut / a.scale), jnp.round((total - shortcut) / b.scale)
    q = jnp.floor((a_times * qa + b_times * qb + 2.0 ** (shift - 1)) / 2.0 ** shift)
    q = jnp.clip(q + self.zero_point, self.low, self.high)
    return ((q - self.zero_point) * self.scale).astype(total.dtype)

  def round(self, x):
    import jax.numpy as jnp

    step = self.a * self.scale
    if self.mean_of:
      stored = jnp.round(((x - self.b) / step + self.zero_point) * self.mean_of) / self.mean_of
      q = jnp.sign(stored) * jnp.floor(jnp.abs(stored) + 0.5)
    elif self.multiplier is not None:
      drop = self.sum_step.shape[-1] - x.shape[-1]   # 1: the background class the model lacks
      # The int32 sum, converted to float32 as XNNPACK does (to nearest even above 2^24).
      total = jnp.round(x / self.sum_step[drop:]).astype(jnp.float32)
      q = jnp.round(total * jnp.asarray(self.multiplier[drop:])).astype(x.dtype) + self.zero_point
    else:
      q = jnp.round((x - self.b) / step) + self.zero_point
    q = jnp.clip(q, self.low, self.high)
    return ((q - self.zero_point) * step + self.b).astype(x.dtype)


def _grid(tensor: Any, what: str, path: str) -> Grid:
  if not tensor.quantized:
    raise ConversionError(f"{path}: {what} ({tensor.name}) is not quantized: eight_bit_apply is "
                          "for quantized files; run a float file's model as it is")
  if tensor.scale.size != 1:
    raise ConversionError(f"{path}: {what} ({tensor.name}) has per-channel activation scales, "
                          "which eight_bit_apply does not reproduce")
  info = np.iinfo(tensor.dtype)
  return Grid(tensor.index, float(tensor.scale[0]), int(tensor.zero_point[0]), int(info.min),
              int(info.max))


@dataclasses.dataclass(frozen=True)
class EightBit:
  """What `eight_bit_apply` needs of a quantized file."""
  grids: dict[str, Grid]   # {our module path (or INPUT, ...): the grid its output is rounded to}
  # {layer path: (kernel step per output channel, bias step per output channel)}: the file's
  # weights are integers times these steps (bias step = input scale x kernel scale).
  weight_steps: dict[str, tuple[np.ndarray, np.ndarray]]


def _weight_steps(graph: Any, name: str, layer: Any) -> tuple[np.ndarray, np.ndarray]:
  source, kernel, bias = (graph.tensors[i] if i >= 0 else None for i in layer.op.inputs[:3])
  if bias is None or not (kernel.quantized and bias.quantized):
    raise ConversionError(f"{graph.path}: {name} has a float kernel or bias (a hybrid file), "
                          "which eight_bit_apply does not reproduce")
  out = layer.kernel.shape[0] if layer.kind != "depthwise" else layer.kernel.shape[-1]
  kernel_step = np.broadcast_to(kernel.scale.astype(np.float64), (out,))
  # The int32 bias is added to the sum of (input - zero point) x (kernel - zero point): its unit
  # is the exact product of the two scales (the bias tensor's own scale is that product rounded
  # to float32).
  return kernel_step, float(source.scale[0]) * kernel_step


def eight_bit_of(graph: Any, walk: Any, names: dict[str, Any], input_affine: tuple[float, float]
                 ) -> EightBit:
  """The grids of a quantized V1/V2 file's activations and weights; ConversionError otherwise."""
  tensors = graph.tensors
  _grid(tensors[names["stem"].output], "the stem's output", graph.path)   # a float file: refused
  other = sorted({op.name for op in graph.ops} - COVERED_OPS)
  if other:
    raise ConversionError(f"{graph.path} computes {', '.join(other)}: eight_bit_apply reproduces "
                          "V1/V2 graphs (convolutions, additions, pooling) only")
  for op in graph.ops:
    fused = op.options.get("FusedActivationFunction", "none")
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and \
        fused not in ("none", "relu", "relu6"):
      raise ConversionError(f"{graph.path}: operator {op.index} has fused activation {fused}")
  grids = {}
  if tensors[graph.inputs[0]].quantized:
    grids[INPUT] = dataclasses.replace(_grid(tensors[graph.inputs[0]], "the input", graph.path),
                                       a=input_affine[0], b=input_affine[1])
  if names["stem"].input != graph.inputs[0] or INPUT not in grids:   # e.g. QUANTIZE to int8
    grids["stem<input>"] = _grid(tensors[names["stem"].input], "the stem's input", graph.path)
  steps = {name: _weight_steps(graph, name, layer) for name, layer in names.items()}
  for name, layer in names.items():
    grid = _grid(tensors[layer.output], f"the output of {name}", graph.path)
    sum_step = steps[name][1]
    # sum_step, the exact float64 product of two float32 scales, rounded to float32 is their
    # float32 product: the multiplier is LiteRT's (input_scale * kernel_scale) / output_scale.
    multiplier = sum_step.astype(np.float32) / np.float32(grid.scale)
    grids[name] = dataclasses.replace(grid, sum_step=sum_step, multiplier=multiplier)
  for (earlier, added_to), total in zip(walk.residuals, walk.sums):
    block = next(n.split("/")[0] for n, l in names.items() if l.output == added_to)
    grids[block] = dataclasses.replace(
        _grid(tensors[total], f"the residual sum of {block}", graph.path),
        add_of=(_grid(tensors[earlier], f"the input of {block}", graph.path),
                grids[f"{block}/project"]))
  if "classifier" in names:
    pooled = names["classifier"].input
    grids[CLASSIFIER_INPUT] = _grid(tensors[pooled], "the pooled features", graph.path)
    pool = next((op for op in graph.ops if pooled in op.outputs), None)
    if pool is not None and pool.name == "AVERAGE_POOL_2D":
      source, grid = tensors[pool.inputs[0]], grids[CLASSIFIER_INPUT]
      before = _grid(source, "the pooled map", graph.path)
      if (before.scale, before.zero_point) != (grid.scale, grid.zero_point) or \
          np.prod(tensors[pooled].shape[1:3]) != 1:
        raise ConversionError(f"{graph.path}: its AVERAGE_POOL_2D is not a global average on "
                              "one 8-bit grid")
      grids[CLASSIFIER_INPUT] = dataclasses.replace(grid, mean_of=int(np.prod(source.shape[1:3])))
  return EightBit(grids, steps)


def _snap(values: Any, step: np.ndarray, what: str) -> np.ndarray:
  values = np.asarray(values, np.float64)
  if step.shape[-1] == values.shape[-1] + 1:   # the background class the conversion dropped
    step = step[1:]
  q = values / step
  # float32 holds an integer above 2^24 (a bias over a tiny kernel scale) only to 1 part in 2^23.
  if np.any(np.abs(q - np.round(q)) > np.maximum(0.01, np.abs(q) * 2.0 ** -22)):
    raise ValueError(f"eight_bit_apply: {what} is not the file's (not on its 8-bit grid); it "
                     "reproduces the file with its own weights: pass the variables from_tflite "
                     "returned")
  return np.round(q) * step


def on_file_grid(variables: Any, steps: dict[str, tuple[np.ndarray, np.ndarray]],
                 epsilon: float) -> dict[str, Any]:
  """The converted variables in float64 exactly as the file stores them: each kernel and bias an
  integer times its step, and the identity BatchNorm an exact identity. A layer's float64 output
  is then its int32 sum times the sum's step to 1 part in 10^15, so the sum is recovered exactly
  however large (from float32 weights, held to 1 part in 10^7, only below about 10^6)."""
  from flax import traverse_util

  flat = {c: {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(
      tree, sep="/").items()} for c, tree in variables.items()}
  params, stats = flat["params"], flat.get("batch_stats", {})
  for path, (kernel_step, bias_step) in steps.items():
    if f"{path}/kernel" in params:                       # a Dense layer: kernel and bias
      params[f"{path}/kernel"] = _snap(params[f"{path}/kernel"], kernel_step, f"{path}/kernel")
      params[f"{path}/bias"] = _snap(params[f"{path}/bias"], bias_step, f"{path}/bias")
      continue
    key = f"{path}/conv/kernel"
    params[key] = _snap(params[key], kernel_step, key)
    mean, var = stats[f"{path}/norm/mean"], stats[f"{path}/norm/var"]
    gain = params[f"{path}/norm/scale"] / np.sqrt(var + epsilon)
    if np.abs(mean).max() > 0 or np.abs(gain - 1).max() > 1e-6:
      raise ValueError(f"eight_bit_apply: {path}/norm is not the identity the conversion wrote; "
                       "pass the variables from_tflite returned")
    params[f"{path}/norm/scale"] = np.sqrt(var + epsilon)
    params[f"{path}/norm/bias"] = _snap(params[f"{path}/norm/bias"], bias_step, f"{path}/norm/bias")
  return {c: traverse_util.unflatten_dict(tree, sep="/") for c, tree in flat.items()}


def interceptor(grids: dict[str, Grid]) -> Callable:
  def intercept(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    if not path and INPUT in grids:            # the whole model: round the images
      args = (grids[INPUT].round(args[0]), *args[1:])
    elif path == "classifier" and CLASSIFIER_INPUT in grids:
      args = (grids[CLASSIFIER_INPUT].round(args[0]), *args[1:])
    elif path == "stem" and "stem<input>" in grids:
      args = (grids["stem<input>"].round(args[0]), *args[1:])
    out = next_fun(*args, **kwargs)
    grid = grids.get(path)
    if grid is None or not path:
      return out
    return grid.round_sum(args[0], out) if grid.add_of else grid.round(out)
  return intercept


def eight_bit_or_reason(graph: Any, walk: Any, names: dict[str, Any],
                        input_affine: tuple[float, float]) -> tuple[Optional[EightBit], str]:
  """(EightBit, "") for a file `eight_bit_apply` reproduces, else (None, why not)."""
  try:
    return eight_bit_of(graph, walk, names, input_affine), ""
  except ConversionError as e:
    return None, str(e)
