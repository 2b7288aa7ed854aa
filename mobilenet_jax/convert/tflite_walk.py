"""A TFLite graph read as a MobileNet: its layers with weights, in order, and how they connect.

`walk(graph)` follows the main feature map through the operators and returns the layers (conv,
depthwise, dense) with their dequantized weights, strides, padding and activations, the residual
additions and squeeze-excite gates, and how the input is scaled. Anything a MobileNet does not
contain (branches, concatenation, max pooling, dilation, depth multipliers, ...) is a
`ConversionError` naming the operator. Folded BatchNorm (TFLite's conv + bias) stays a bias here;
`tflite_source` maps it onto our BatchNorm.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from mobilenet_jax.convert.assemble import ConversionError
from mobilenet_jax.convert.tflite_graph import Graph, Op

# Elementwise operators with a constant operand (or none), chained into one function: the hard
# sigmoid relu6(x + 3) / 6 of V3's squeeze-excite and hard-swish, or a rescaling of the input.
_ELEMENTWISE = {
    "ADD": lambda v, c: v + c, "SUB": lambda v, c: v - c, "MUL": lambda v, c: v * c,
    "DIV": lambda v, c: v / c, "MAXIMUM": np.maximum, "MINIMUM": np.minimum,
    "RELU": lambda v, c: np.maximum(v, 0), "RELU6": lambda v, c: np.clip(v, 0, 6),
}
_PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE")
# Operators that compute a shape (the target of a RESHAPE for a dynamic batch), not image data.
_SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER", "SLICE", "CAST")
ACTIVATION_OPS = {"RELU": "relu", "RELU6": "relu6", "HARD_SWISH": "hard_swish"}
_PROBE = np.linspace(-8.0, 8.0, 321)


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
  return np.clip(x + 3.0, 0.0, 6.0) / 6.0


@dataclasses.dataclass
class Layer:
  """A layer with weights, in TFLite layout: conv [O, kh, kw, I], depthwise [1, kh, kw, C],
  dense [O, I] (or a 1x1 conv [O, 1, 1, I] on the pooled map)."""
  kind: str                       # "conv" | "depthwise" | "dense"
  kernel: np.ndarray
  bias: Optional[np.ndarray]
  stride: int
  pads: tuple[tuple[int, int], tuple[int, int]]   # zero padding (top, bottom), (left, right)
  in_size: tuple[int, int]        # height, width of the input before padding
  activation: str                 # "none" | "relu" | "relu6" | "hard_swish" | ...
  input: int                      # tensor read (after following pass-through ops)
  output: int
  op: Op
  se: bool = False                # a squeeze-excite layer (dense on a pooled copy of the map)


@dataclasses.dataclass
class Walk:
  layers: list[Layer]
  residuals: list[tuple[int, int]]   # (earlier feature map, map it was added to)
  input_affine: tuple[float, float]  # the graph's own rescaling: model input = a * file input + b
  logits: Optional[int]              # tensor holding the logits (the softmax input, if any)
  sums: list[int] = dataclasses.field(default_factory=list)   # each residual addition's output


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow SAME: total padding max((ceil(n/s) - 1) s + k - n, 0), the extra pixel after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def padding_mode(layer: Layer) -> set[str]:
  """Which of our padding modes ("same", "symmetric") compute exactly this layer's padding."""
  k = layer.kernel.shape[1] if layer.kind != "dense" else 1
  modes = set()
  if layer.pads == tuple(_same_pads(n, k, layer.stride) for n in layer.in_size):
    modes.add("same")
  if layer.pads == ((k // 2, k // 2),) * 2:
    modes.add("symmetric")
  return modes


class _Walker:

  def __init__(self, graph: Graph):
    self.g = graph
    self.alias: dict[int, int] = {}
    self.layers: list[Layer] = []
    self.producer: dict[int, Layer] = {}
    self.pads: dict[int, tuple[int, tuple]] = {}
    self.chains: dict[int, tuple[int, list]] = {}   # output -> (base tensor, [(op, constant)])
    self.pooled: dict[int, int] = {}                 # pooled tensor -> the map it pools
    self.dense_path: set[int] = set()                # tensors computed from a pooled vector
    self.residuals: list[tuple[int, int]] = []
    self.sums: list[int] = []
    self.history: list[int] = []                     # every value the main feature map took
    self.shapes: set[int] = set()                    # tensors computed by shape arithmetic
    self.input_affine = (1.0, 0.0)
    self.logits: Optional[int] = None
    self.softmax = False
    if len(graph.inputs) != 1:
      raise ConversionError(f"{graph.path} has {len(graph.inputs)} inputs; a MobileNet has one "
                            "image input")
    self.stream = graph.inputs[0]
    self.history.append(self.stream)

  def error(self, op: Op, why: str) -> ConversionError:
    return ConversionError(f"{self.g.path}: operator {op.index} ({op.name}) {why}. This file is "
                           f"not a MobileNet V1/V2/V3 this project can build (it has: "
                           f"{self.g.describe()})")

  def canon(self, t: int) -> int:
    while t in self.alias:
      t = self.alias[t]
    return t

  def shape(self, t: int) -> tuple[int, ...]:
    return self.g.tensors[t].shape

  def operands(self, op: Op) -> tuple[list[int], list[np.ndarray]]:
    """(computed inputs, constant inputs) of an elementwise op."""
    computed, constants = [], []
    for t in op.inputs:
      value = self.g.constant(t)
      (computed.append(self.canon(t)) if value is None else constants.append(value))
    return computed, constants

  def run(self) -> Walk:
    for op in self.g.ops:
      self.visit(op)
    out = self.canon(self.g.outputs[0]) if len(self.g.outputs) == 1 else None
    if out is None:
      raise ConversionError(f"{self.g.path} has {len(self.g.outputs)} outputs; a MobileNet "
                            "classifier has one")
    if self.logits is None:
      self.logits = out
    elif out != self.logits:
      raise ConversionError(f"{self.g.path}: the output is not the softmax of the classifier")
    return Walk(self.layers, self.residuals, self.input_affine, self.logits, self.sums)

  # ----------------------------------------------------------------------- operators

  def visit(self, op: Op) -> None:
    name = op.name
    if name == "DEQUANTIZE" and self.g.constant(op.outputs[0]) is not None:
      return   # a float16/int8 weight: Graph.constant gives its value
    if name == "SHAPE" or (name in _SHAPE_OPS and all(
        i < 0 or i in self.shapes or self.g.constant(i) is not None for i in op.inputs)):
      self.shapes.update(op.outputs)
      return
    if name in _PASS_THROUGH:
      self.alias[op.outputs[0]] = self.canon(op.inputs[0])
      if name in ("RESHAPE", "SQUEEZE") and self.canon(op.inputs[0]) == self.stream:
        raise self.error(op, "reshapes the feature map")
      return
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
      return self.weighted(op)
    if name in ("PAD", "PADV2"):
      paddings = self.g.constant(op.inputs[1])
      value = self.g.constant(op.inputs[2]) if len(op.inputs) > 2 else None
      if paddings is None or (value is not None and np.any(value != 0)):
        raise self.error(op, "pads with something other than constant zeros")
      paddings = paddings.astype(int)
      if np.any(paddings[0]) or np.any(paddings[3]):
        raise self.error(op, "pads the batch or channel axis")
      self.pads[op.outputs[0]] = (self.canon(op.inputs[0]),
                                  (tuple(paddings[1]), tuple(paddings[2])))
      return
    if name in ("AVERAGE_POOL_2D", "MEAN"):
      return self.pool(op)
    if name == "SOFTMAX":   # must end the graph: checked in run()
      if self.softmax or self.canon(op.inputs[0]) not in self.dense_path:
        raise self.error(op, "is a softmax that does not end the classifier")
      self.logits, self.softmax = self.canon(op.inputs[0]), True
      self.alias[op.outputs[0]] = self.logits
      return
    if name == "HARD_SWISH":
      return self.activation(op, "hard_swish")
    if name in _ELEMENTWISE:
      return self.elementwise(op)
    raise self.error(op, "is not an operator of a MobileNet")

  def activation(self, op: Op, kind: str) -> None:
    x = self.canon(op.inputs[0])
    layer = self.producer.get(x)
    if layer is None or layer.activation != "none" or len(self.g.consumers(op.inputs[0])) != 1:
      raise self.error(op, f"applies {kind} to something other than a linear layer's output, "
                           "or that output is also read without it")
    layer.activation = kind
    self.alias[op.outputs[0]] = x

  def elementwise(self, op: Op) -> None:
    computed, constants = self.operands(op)
    if len(computed) == 1 and len(constants) <= 1:
      x = computed[0]
      if op.name in ACTIVATION_OPS and x in self.producer and x not in self.chains:
        return self.activation(op, ACTIVATION_OPS[op.name])
      if op.name in ("SUB", "DIV") and self.g.constant(op.inputs[0]) is not None:
        raise self.error(op, "computes constant - x or constant / x")
      base, chain = self.chains.get(x, (x, []))
      self.chains[op.outputs[0]] = (base, chain + [(op.name, constants[0] if constants else None)])
      if x in self.dense_path:
        self.dense_path.add(op.outputs[0])
      return
    if len(computed) != 2 or op.name not in ("ADD", "MUL"):
      raise self.error(op, "combines tensors in a way a MobileNet does not")
    if op.options.get("FusedActivationFunction", "none") != "none":
      raise self.error(op, "has a fused activation")
    a, b = computed
    if op.name == "ADD":
      if self.stream not in (a, b):
        raise self.error(op, "adds two tensors neither of which is the current feature map")
      other = b if a == self.stream else a
      if other not in self.history:
        raise self.error(op, "adds a tensor that is not an earlier feature map")
      self.residuals.append((other, self.stream))
      self.sums.append(op.outputs[0])
      self.stream = op.outputs[0]
      self.history.append(self.stream)
      return
    # MUL of two computed tensors: x * hard_sigmoid(x) (hard-swish) or a squeeze-excite gate.
    for x, gate in ((a, b), (b, a)):
      if gate not in self.chains:
        continue
      base, chain = self.chains[gate]
      if not self._is_hard_sigmoid(base, chain):
        raise self.error(op, "multiplies by a gate that is not the hard sigmoid relu6(x + 3) / 6")
      if base == x and x in self.producer and self.producer[x].activation == "none":
        self.producer[x].activation = "hard_swish"
        self.alias[op.outputs[0]] = x
        return
      se = self._squeeze_excite(base, x)
      if x == self.stream and se:
        for layer in se:
          layer.se = True
        self.stream = op.outputs[0]
        self.history.append(self.stream)
        return
    raise self.error(op, "multiplies tensors in a way a MobileNet does not")

  def pool(self, op: Op) -> None:
    x = self.canon(op.inputs[0])
    _, h, w, _ = self.shape(x)
    if op.name == "MEAN":
      axes = self.g.constant(op.inputs[1])
      if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [1, 2]:
        raise self.error(op, "is a mean over other axes than height and width")
    elif (op.options.get("FilterHeight"), op.options.get("FilterWidth")) != (h, w) or \
        op.options.get("Padding") != "VALID" or \
        op.options.get("FusedActivationFunction") != "none":
      raise self.error(op, f"is an average pool that is not global over the {h}x{w} map")
    if x != self.stream:
      raise self.error(op, "pools a tensor other than the current feature map")
    self.pooled[op.outputs[0]] = x
    self.dense_path.add(op.outputs[0])

  def weighted(self, op: Op) -> None:
    x = self.canon(op.inputs[0])
    kernel = self.g.constant(op.inputs[1])
    bias = self.g.constant(op.inputs[2]) if len(op.inputs) > 2 else None
    if kernel is None:
      raise self.error(op, "has weights computed at run time")
    if kernel.dtype != np.float32 or (bias is not None and bias.dtype != np.float32):
      raise self.error(op, f"has {kernel.dtype} weights without quantization parameters")
    options = op.options
    activation = options.get("FusedActivationFunction", "none")
    if activation not in ("none", "relu", "relu6"):
      raise self.error(op, f"has the fused activation {activation}")
    if x in self.dense_path:   # FULLY_CONNECTED, or a 1x1 conv on the pooled [N, 1, 1, C] map
      if op.name == "DEPTHWISE_CONV_2D" or (op.name == "CONV_2D" and kernel.shape[1:3] != (1, 1)):
        raise self.error(op, "is a spatial convolution after global pooling")
      if op.name == "FULLY_CONNECTED" and kernel.ndim != 2:
        raise self.error(op, f"has a {kernel.ndim}-D weight")
      layer = Layer("dense", kernel, bias, 1, ((0, 0), (0, 0)), (1, 1), activation, x,
                    op.outputs[0], op)
      self._add(layer)
      self.dense_path.add(op.outputs[0])
      return
    if op.name == "FULLY_CONNECTED":
      raise self.error(op, "is a fully connected layer on a feature map that was not pooled")
    pads = ((0, 0), (0, 0))
    if x in self.pads:
      x, pads = self.pads[x]
    if x in self.chains and self.chains[x][0] == self.g.inputs[0] and not self.layers:
      x = self._fold_input_affine(op, x)
    if x != self.stream:
      raise self.error(op, "reads a tensor other than the previous layer's output: the graph "
                           "branches")
    if options.get("DilationHFactor", 1) != 1 or options.get("DilationWFactor", 1) != 1:
      raise self.error(op, "is a dilated convolution")
    if options["StrideH"] != options["StrideW"]:
      raise self.error(op, f"has unequal strides {options['StrideH']}x{options['StrideW']}")
    _, h, w, c = self.shape(x)
    if options["Padding"] == "SAME":
      if pads != ((0, 0), (0, 0)):
        raise self.error(op, "pads explicitly and then SAME")
      kh, kw = kernel.shape[1:3]
      pads = (_same_pads(h, kh, options["StrideH"]), _same_pads(w, kw, options["StrideW"]))
    kind = "conv"
    if op.name == "DEPTHWISE_CONV_2D":
      kind = "depthwise"
      if kernel.shape[3] != c or options.get("DepthMultiplier", 1) not in (0, 1):
        raise self.error(op, f"is a depthwise convolution with depth multiplier "
                             f"{kernel.shape[3] / c:g}; ours have one filter per channel")
    self._add(Layer(kind, kernel, bias, options["StrideH"], pads, (h, w), activation, x,
                    op.outputs[0], op))
    self.stream = op.outputs[0]
    self.history.append(self.stream)

  def _is_hard_sigmoid(self, base: int, chain: list) -> bool:
    """Whether chain(base) is hard_sigmoid(base). The TFLite converter may fold the "+ 3" into the
    bias of the layer computing `base` and the ReLU6 into its fused activation, leaving "* 1/6":
    that layer then gets back its own bias and no activation."""
    def apply(values):
      for name, constant in chain:
        values = _ELEMENTWISE[name](values, constant)
      return values

    if np.allclose(apply(_PROBE), hard_sigmoid(_PROBE), atol=1e-3):
      return True
    layer = self.producer.get(base)
    if layer is not None and layer.activation == "relu6" and layer.bias is not None and \
        np.allclose(apply(np.clip(_PROBE, 0, 6)), hard_sigmoid(_PROBE - 3.0), atol=1e-3):
      layer.activation, layer.bias = "none", layer.bias - 3.0
      return True
    return False

  def _squeeze_excite(self, gate: int, x: int) -> list[Layer]:
    """The two dense layers computing `gate` from the pooled `x`: pool -> reduce -> expand."""
    expand = self.producer.get(gate)
    reduce = expand and self.producer.get(expand.input)
    if expand and reduce and expand.kind == reduce.kind == "dense" and \
        self.pooled.get(reduce.input) == x:
      return [reduce, expand]
    return []

  def _add(self, layer: Layer) -> None:
    self.layers.append(layer)
    self.producer[layer.output] = layer

  def _fold_input_affine(self, op: Op, x: int) -> int:
    base, chain = self.chains[x]
    values = np.array([0.0, 1.0, 255.0, 127.0])
    for name, constant in chain:
      if name not in ("ADD", "SUB", "MUL", "DIV") or np.size(constant) != 1:
        raise self.error(op, "reads an input transformed by something other than a rescaling")
      values = _ELEMENTWISE[name](values, float(np.ravel(constant)[0]))
    a, b = values[1] - values[0], values[0]
    self.input_affine = (float(a), float(b))
    return base


def walk(graph: Graph) -> Walk:
  """The MobileNet structure of `graph`; ConversionError on anything else."""
  return _Walker(graph).run()
