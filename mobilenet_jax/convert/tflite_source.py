"""TensorFlow Lite MobileNets (TF-slim, Keras, TF Hub, Coral, MediaPipe exports) -> our model.

    model, variables = from_tflite("mobilenet_v2_1.0_224_quant.tflite")

The architecture (V1, V2, V3-Large/Small, minimalistic or not), width, number of classes and input
size are read from the graph (`tflite_walk`); quantized weights are dequantized (per-tensor or
per-channel). TFLite folds BatchNorm into the convolution (kernel * gamma / sqrt(var + eps), plus a
bias); our convolutions have no bias and a BatchNorm after them, so the folded bias becomes that
BatchNorm's offset, with identity statistics (mean 0, var 1) and scale sqrt(1 + eps): the norm then
computes x + bias exactly, and the model stays the standard one (fine-tuning re-learns statistics).

A quantized model runs here in float with the dequantized weights: its activations are not
quantized, so its outputs differ a little from the integer arithmetic of TFLite itself;
`eight_bit_apply` (`tflite_eight_bit.py`) adds the file's 8-bit arithmetic back (LiteRT's logits).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from mobilenet_jax.convert.assemble import (Conversion, ConversionError, Family, Layout,
                                            convert_family, width_candidates)
from mobilenet_jax.convert.plan import Unit
from mobilenet_jax.convert.tflite_activations import EightBit, eight_bit_or_reason
from mobilenet_jax.convert.tflite_graph import Graph, Tensor, read_tflite
from mobilenet_jax.convert.tflite_metadata import KEY
from mobilenet_jax.convert.tflite_walk import Layer, Walk, padding_mode, walk
from mobilenet_jax.data.eval_recipes import EvalRecipe, tf_slim
from mobilenet_jax.models.spec import LayerKind

BN_EPSILON = 1e-3


def _conv(w: np.ndarray, depthwise: bool) -> np.ndarray:
  # CONV_2D [O, kh, kw, I] -> [kh, kw, I, O]; DEPTHWISE_CONV_2D [1, kh, kw, C] -> [kh, kw, 1, C].
  return w.transpose(1, 2, 0, 3) if depthwise else w.transpose(1, 2, 3, 0)


TFLITE = Layout(
    separator="/", kernel="kernel", bias="bias",
    norm={"scale": "scale", "bias": "bias", "mean": "mean", "var": "var"},
    conv=_conv,
    # FULLY_CONNECTED [O, I], or a 1x1 CONV_2D [O, 1, 1, I] on the pooled map.
    dense=lambda w: w.reshape(w.shape[0], -1).T, dense_ndims=(2, 4), out_axis=0)


@dataclasses.dataclass(frozen=True)
class TfliteInput:
  """What the file's input tensor holds, to feed it the images our model gets.

  Our model's input x (normalised image) relates to the file's input value v (real, after
  dequantization) by x = affine[0] * v + affine[1] (a rescaling inside the graph; else identity;
  per-channel arrays for a file that normalises 0..255 pixels with ImageNet's mean and std).
  """
  index: int
  shape: tuple[int, ...]
  dtype: Any
  scale: Optional[float]
  zero_point: Optional[int]
  affine: tuple[Any, Any]

  def from_model_input(self, x: np.ndarray) -> np.ndarray:
    """Normalised images (what our model reads) -> the file's input tensor values."""
    a, b = self.affine
    real = (np.asarray(x, np.float64) - b) / a
    if self.scale is None:
      return real.astype(self.dtype)
    info = np.iinfo(self.dtype)
    return np.clip(np.round(real / self.scale + self.zero_point), info.min, info.max
                   ).astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class TfliteModel:
  """A converted `.tflite`: the conversion, its eval recipe and how to feed and read the file."""
  conversion: Conversion
  recipe: EvalRecipe
  input: TfliteInput
  logits: int                 # tensor of the file holding the logits (before any softmax)
  background: bool            # the file's class 0 is a background class our model dropped
  # Quantized V1/V2 files: the grids of their activations and weights, for
  # `eight_bit_apply`; None (and the reason) for other files.
  eight_bit: Optional[EightBit] = None
  no_eight_bit_reason: str = ""


def _segment(w: Walk, path: str) -> dict[str, Layer]:
  """Names each layer with weights by its place in our networks ("stem", "blocks_3/expand", ...)."""
  dense = [l for l in w.layers if l.kind == "dense" and not l.se]
  main = [l for l in w.layers if l.kind != "dense"]
  if not main or main[0].kind != "conv" or main[0].kernel.shape[-1] != 3:
    raise ConversionError(f"{path} does not start with a convolution of the 3-channel image")
  if len(dense) > 2:
    raise ConversionError(f"{path} has {len(dense)} layers after global pooling; a MobileNet has "
                          "a classifier, and V3 one hidden layer before it")
  names = {"stem": main[0]}
  if dense:
    names["classifier"] = dense[-1]
  if len(dense) == 2:
    names["head"] = dense[0]
  rest = main[1:]
  if all(l.activation != "none" for l in rest):   # V1: depthwise separable blocks
    for i in range(0, len(rest), 2):
      pair = rest[i:i + 2]
      if [l.kind for l in pair] != ["depthwise", "conv"]:
        raise ConversionError(f"{path}: layers after the stem are not depthwise/pointwise pairs "
                              "(MobileNet V1) and none is linear (V2/V3 projection)")
      names[f"blocks_{i // 2}/depthwise"], names[f"blocks_{i // 2}/pointwise"] = pair
    return names
  block: list[Layer] = []
  index = 0
  for layer in rest:
    block.append(layer)
    if layer.activation == "none" and layer.kind == "conv":   # the linear projection ends a block
      roles = {2: ("depthwise", "project"), 3: ("expand", "depthwise", "project")}.get(len(block))
      if roles is None or [l.kind for l in block][-2] != "depthwise":
        raise ConversionError(f"{path}: block {index} has layers "
                              f"{[l.kind for l in block]}, not [expand,] depthwise, project")
      for role, l in zip(roles, block):
        names[f"blocks_{index}/{role}"] = l
      index, block = index + 1, []
  if len(block) == 1:
    names["last_conv"] = block[0]
  elif block:
    raise ConversionError(f"{path}: {len(block)} layers follow the last block; expected one 1x1 "
                          "convolution")
  se = [l for l in w.layers if l.se]
  for reduce, expand in zip(se[::2], se[1::2]):
    depthwise = next(l for l in reversed(main) if l.op.index < reduce.op.index)
    if depthwise.kind != "depthwise":
      raise ConversionError(f"{path}: squeeze-excite after a {depthwise.kind}, not a depthwise "
                            "convolution")
    block_name = next(n for n, l in names.items() if l is depthwise).rsplit("/", 1)[0]
    names[f"{block_name}/se/reduce"], names[f"{block_name}/se/expand"] = reduce, expand
  return names


def _source(names: dict[str, Layer]) -> dict[str, np.ndarray]:
  """`{'stem/kernel': ..., 'stem/norm/bias': ...}`: the folded bias onto identity BatchNorm."""
  source = {}
  for name, layer in names.items():
    source[f"{name}/kernel"] = layer.kernel
    out = layer.kernel.shape[0] if layer.kind != "depthwise" else layer.kernel.shape[-1]
    bias = layer.bias if layer.bias is not None else np.zeros(out, np.float32)
    if layer.kind == "dense":
      source[f"{name}/bias"] = bias
      continue
    source[f"{name}/norm/scale"] = np.full(out, math.sqrt(1.0 + BN_EPSILON), np.float32)
    source[f"{name}/norm/bias"] = bias
    source[f"{name}/norm/mean"] = np.zeros(out, np.float32)
    source[f"{name}/norm/var"] = np.ones(out, np.float32)
  return source


def _namer(unit: Unit) -> tuple[str, Optional[str]]:
  name = "/".join(unit.path)
  return (name, None) if unit.kind == "dense" else (name, f"{name}/norm")


def _family(names: dict[str, Layer], padding: str, path: str) -> Family:
  blocks = len({n.split("/")[0] for n in names if n.startswith("blocks_")})
  options = {"padding": padding, "bn_epsilon": BN_EPSILON}
  what = f"TFLite file {path}"
  if "blocks_0/pointwise" in names:
    widths = width_candidates((names[f"blocks_{blocks - 1}/pointwise"].kernel.shape[0] / 1024,))
    return Family(f"{what} (MobileNet V1, {blocks} blocks)", "mobilenet_v1", _namer, TFLITE,
                  options, widths)
  if "head" not in names:
    if blocks != 17:
      raise ConversionError(f"{path} looks like a MobileNet V2 (inverted residuals, no hidden "
                            f"layer after pooling) but has {blocks} blocks, not 17")
    widths = width_candidates((names["blocks_16/project"].kernel.shape[0] / 320,))
    return Family(f"{what} (MobileNet V2)", "mobilenet_v2", _namer, TFLITE, options, widths)
  variant = {15: "large", 11: "small"}.get(blocks)
  if variant is None:
    raise ConversionError(f"{path} looks like a MobileNet V3 (hidden layer after pooling) but has "
                          f"{blocks} blocks (Large has 15, Small 11)")
  minimal = not any("/se/" in n for n in names)
  name = f"mobilenet_v3_{variant}" + ("_minimal" if minimal else "")
  return Family(f"{what} ({name})", name, _namer, TFLITE, dict(options, width_rule="tf"),
                width_candidates(), has_head=True)


def _padding(names: dict[str, Layer], path: str) -> str:
  modes = {"same", "symmetric"}
  for name, layer in names.items():
    if layer.kind != "dense":
      modes &= padding_mode(layer)
      if not modes:
        raise ConversionError(f"{path}: layer {name} pads {layer.pads} on a {layer.in_size} map, "
                              "which is neither TensorFlow SAME nor symmetric padding")
  return "same" if "same" in modes else "symmetric"


def _check_against_spec(conversion: Conversion, names: dict[str, Layer], w: Walk,
                        path: str) -> None:
  """Strides, activations and residual connections of the file must be those of our network."""
  spec = conversion.model().network_spec()
  problems = []

  def expect(name: str, stride: Optional[int], activation: str) -> None:
    layer = names[name]
    if stride is not None and layer.stride != stride:
      problems.append(f"{name}: stride {layer.stride} in the file, {stride} in ours")
    if layer.activation != activation:
      problems.append(f"{name}: activation {layer.activation} in the file, {activation} in ours")

  expect("stem", spec.stem.stride, spec.stem.activation)
  residual_pairs = set(w.residuals)
  for i, block in enumerate(spec.blocks):
    prefix = f"blocks_{i}"
    if block.kind == LayerKind.SEPARABLE:
      expect(f"{prefix}/depthwise", block.stride, block.activation)
      expect(f"{prefix}/pointwise", 1, block.activation)
      continue
    if f"{prefix}/expand" in names:
      expect(f"{prefix}/expand", 1, block.activation)
    expect(f"{prefix}/depthwise", block.stride, block.activation)
    expect(f"{prefix}/project", 1, "none")
    if block.se_features is not None:
      expect(f"{prefix}/se/reduce", None, "relu")
      expect(f"{prefix}/se/expand", None, "none")
    first = names.get(f"{prefix}/expand", names[f"{prefix}/depthwise"])
    ours = block.stride == 1 and first.kernel.shape[-1] == block.features
    pair = (first.input, names[f"{prefix}/project"].output)
    theirs = pair in residual_pairs
    residual_pairs.discard(pair)
    if ours != theirs:
      problems.append(f"{prefix}: {'a' if theirs else 'no'} residual connection in the file, "
                      f"{'one' if ours else 'none'} in ours")
  if spec.last_conv is not None:
    expect("last_conv", spec.last_conv.stride, spec.last_conv.activation)
  if spec.head_features:
    expect("head", None, spec.head_activation)
  if "classifier" in names:
    expect("classifier", None, "none")
  if residual_pairs:
    problems.append(f"{len(residual_pairs)} additions in the file that are no residual connection "
                    "of ours")
  if problems:
    raise ConversionError(f"{path} has the weights of {conversion.model_name} but computes "
                          "something else:\n  " + "\n  ".join(problems))


def _input(graph: Graph, w: Walk) -> TfliteInput:
  t: Tensor = graph.tensors[graph.inputs[0]]
  if len(t.shape) != 4 or t.shape[3] != 3:
    raise ConversionError(f"{graph.path}: the input has shape {t.shape}; expected "
                          "[batch, height, width, 3] images")
  scale = float(t.scale[0]) if t.quantized else None
  zero_point = int(t.zero_point[0]) if t.quantized else None
  return TfliteInput(t.index, t.shape, t.dtype, scale, zero_point, w.input_affine)


def _normalization(spec: TfliteInput, path: str) -> str:
  """Which of our normalisations turns 0..255 pixels into what the file computes on.

  A uint8 input holds the pixels (int8: pixel - 128) with real value scale * (q - zero_point);
  scale 1/128 and zero point 128 (or 1/127.5, 127) is the inception [-1, 1] normalisation. A
  float input says nothing: TFLite MobileNets (TF-slim, Keras) take inception-normalised images,
  unless the graph rescales 0..255 pixels itself (Keras V3's Rescaling layer).
  """
  a, b = spec.affine
  if spec.scale is not None:
    shift = 128 if spec.dtype == np.int8 else 0
    a, b = a * spec.scale, b - a * spec.scale * (spec.zero_point + shift)
  elif (a, b) == (1.0, 0.0):
    return "inception"
  for name, (want_a, want_b) in {"inception": (1 / 127.5, -1.0), "unit": (1 / 255, 0.0)}.items():
    if abs(a / want_a - 1) < 0.01 and abs(b - want_b) < 0.02:
      return name
  raise ConversionError(f"{path}: the input maps pixel p to {a:.6g} * p + {b:.6g}, which is "
                        "neither inception (p / 127.5 - 1) nor unit (p / 255) normalisation")


def convert_tflite_file(path: str, drop_background: bool = True) -> TfliteModel:
  """`.tflite` -> `TfliteModel` (the conversion plus its input, logits and eval recipe)."""
  graph = read_tflite(path)
  if KEY in graph.metadata:
    raise ConversionError(f"{path} was exported by mobilenet_jax: its graph (BatchNorm folded, "
                          "int8-friendly) is not read back into our model; use the weights it was "
                          "exported from (python -m mobilenet_jax.evaluate --runtime=litert scores "
                          "the file itself)")
  w = walk(graph)
  names = _segment(w, path)
  conversion = convert_family(_source(names), _family(names, _padding(names, path), path),
                              drop_background)
  _check_against_spec(conversion, names, w, path)
  spec = _input(graph, w)
  height, width = spec.shape[1:3]
  if height != width:
    raise ConversionError(f"{path} takes {height}x{width} images; the eval recipes here are square")
  recipe = tf_slim(height, _normalization(spec, path))
  conversion = dataclasses.replace(conversion, preprocessing=recipe.to_dict())
  classes = names["classifier"].kernel.shape[0] if "classifier" in names else 0
  background = bool(drop_background and classes == 1001)
  eight_bit, reason = eight_bit_or_reason(graph, w, names, w.input_affine)
  return TfliteModel(conversion, recipe, spec, w.logits, background, eight_bit, reason)


def convert_tflite(path: str, drop_background: bool = True) -> Conversion:
  """`.tflite` -> `Conversion` (model name, options, variables, eval preprocessing)."""
  return convert_tflite_file(path, drop_background).conversion


def from_tflite(path: str, *, drop_background: bool = True, **model_options: Any):
  """A TFLite MobileNet as `(our Flax module, variables)`.

  Reads V1, V2 and V3 (Large/Small, minimalistic or not) in float, float16 or quantized (uint8/int8,
  per-tensor or per-channel) form; architecture, width, classes and input size come from the file.
  A 1001-way classifier (TF-slim: class 0 = background) loses class 0 unless
  `drop_background=False`. Feed images prepared by the file's recipe
  (`convert_tflite(path).preprocessing`: TF-slim's central crop 87.5%, bilinear resize, usually
  inception normalisation x / 127.5 - 1). `model_options` sets options that do not change the
  weights (compute, dtype, dropout_rate, ...). A file that is not such a MobileNet raises
  `ConversionError` saying what was found. The model computes in float; `eight_bit_apply(model,
  path)` runs it with a quantized file's own 8-bit arithmetic (LiteRT's logits).
  """
  conversion = convert_tflite(path, drop_background)
  return conversion.model(**model_options), conversion.variables
