"""A `.tflite` file as plain Python: tensors (with dequantized constants) and operators in order.

Read with the `tflite` package (the FlatBuffers bindings of TensorFlow Lite's schema); nothing runs
the model. Quantized constants are dequantized as the schema defines: real = scale * (q - zero_point),
with one scale per slice along `quantized_dimension` for per-channel quantization (TFLite's
quantization spec); int32 biases carry their own scale (input scale x weight scale).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Optional

import numpy as np

# TensorType enum of the schema -> numpy dtype of the stored values.
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
           7: np.int16, 9: np.int8, 10: np.float64}
# ActivationFunctionType enum -> our activation names ("none" = linear).
FUSED_ACTIVATIONS = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh",
                     5: "sign_bit"}
PADDINGS = {0: "SAME", 1: "VALID"}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor of the graph; `data` holds the stored values of a constant (None otherwise)."""
  index: int
  name: str
  shape: tuple[int, ...]
  dtype: Any
  scale: Optional[np.ndarray] = None       # quantization scales (one, or one per channel)
  zero_point: Optional[np.ndarray] = None
  axis: int = 0                            # quantized_dimension of per-channel scales
  data: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)

  @property
  def quantized(self) -> bool:
    return self.scale is not None and self.scale.size > 0

  def dequantize(self, values: np.ndarray) -> np.ndarray:
    """Stored values -> float32 real values; integers without quantization parameters (shapes,
    axes, paddings) are returned as they are."""
    values = np.asarray(values)
    if not self.quantized:
      return values.astype(np.float32) if np.issubdtype(values.dtype, np.floating) else values
    shape = [1] * values.ndim
    if self.scale.size > 1:   # per-channel
      shape[self.axis] = self.scale.size
    scale = self.scale.astype(np.float64).reshape(shape)
    zero_point = self.zero_point.astype(np.float64).reshape(shape) if self.zero_point.size > 1 \
        else float(self.zero_point[0]) if self.zero_point.size else 0.0
    return ((values.astype(np.float64) - zero_point) * scale).astype(np.float32)

  def quantize(self, real: np.ndarray) -> np.ndarray:
    """Real values -> this tensor's stored type (round to nearest, saturate); floats pass through."""
    if not self.quantized:
      return np.asarray(real, self.dtype)
    info = np.iinfo(self.dtype)
    q = np.round(np.asarray(real, np.float64) / float(self.scale[0]) + float(self.zero_point[0]))
    return np.clip(q, info.min, info.max).astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class Op:
  """One operator: builtin name (CONV_2D, ...), tensor indices (-1: optional input left out) and
  the options that matter here (stride, padding, activation, ...)."""
  index: int
  name: str
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  options: dict[str, Any]


@dataclasses.dataclass
class Graph:
  """The first subgraph of a `.tflite` model."""
  path: str
  tensors: list[Tensor]
  ops: list[Op]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  metadata: tuple[str, ...] = ()   # names of the model's metadata entries

  def __post_init__(self):
    self._constants: dict[int, np.ndarray] = {}
    self._consumers: dict[int, list[Op]] = {}
    for op in self.ops:
      for i in op.inputs:
        if i >= 0:
          self._consumers.setdefault(i, []).append(op)
    for op in self.ops:   # float16 / int8 weights stored with a DEQUANTIZE op in front
      if op.name == "DEQUANTIZE" and self.tensors[op.inputs[0]].data is not None:
        source = self.tensors[op.inputs[0]]
        self._constants[op.outputs[0]] = source.dequantize(source.data)

  def constant(self, index: int) -> Optional[np.ndarray]:
    """The value of a constant tensor (float32 when it is a float or a quantized tensor), None for
    a computed one."""
    if index < 0:
      return None
    if index not in self._constants:
      tensor = self.tensors[index]
      if tensor.data is None:
        return None
      self._constants[index] = tensor.dequantize(tensor.data)
    return self._constants[index]

  def consumers(self, index: int) -> list[Op]:
    return self._consumers.get(index, [])

  def describe(self) -> str:
    """Operator counts, e.g. 'CONV_2D x15, DEPTHWISE_CONV_2D x13, ...', for error messages."""
    counts: dict[str, int] = {}
    for op in self.ops:
      counts[op.name] = counts.get(op.name, 0) + 1
    return ", ".join(f"{name} x{n}" for name, n in counts.items())


def _options(op, name: str) -> dict[str, Any]:
  import tflite

  table = op.BuiltinOptions()
  if table is None:
    return {}
  readers = {
      "CONV_2D": (tflite.Conv2DOptions, ("Padding", "StrideH", "StrideW", "DilationHFactor",
                                         "DilationWFactor", "FusedActivationFunction")),
      "DEPTHWISE_CONV_2D": (tflite.DepthwiseConv2DOptions,
                            ("Padding", "StrideH", "StrideW", "DepthMultiplier", "DilationHFactor",
                             "DilationWFactor", "FusedActivationFunction")),
      "AVERAGE_POOL_2D": (tflite.Pool2DOptions, ("Padding", "StrideH", "StrideW", "FilterHeight",
                                                 "FilterWidth", "FusedActivationFunction")),
      "FULLY_CONNECTED": (tflite.FullyConnectedOptions, ("FusedActivationFunction",)),
      "ADD": (tflite.AddOptions, ("FusedActivationFunction",)),
      "MUL": (tflite.MulOptions, ("FusedActivationFunction",)),
      "SUB": (tflite.SubOptions, ("FusedActivationFunction",)),
      "DIV": (tflite.DivOptions, ("FusedActivationFunction",)),
      "MEAN": (tflite.ReducerOptions, ("KeepDims",)),
      "SOFTMAX": (tflite.SoftmaxOptions, ("Beta",)),
  }
  if name not in readers:
    return {}
  cls, fields = readers[name]
  options = cls()
  options.Init(table.Bytes, table.Pos)
  values = {field: getattr(options, field)() for field in fields}
  if "Padding" in values:
    values["Padding"] = PADDINGS[values["Padding"]]
  if "FusedActivationFunction" in values:
    values["FusedActivationFunction"] = FUSED_ACTIVATIONS[values["FusedActivationFunction"]]
  return values


def read_tflite(path: str) -> Graph:
  """Parses `path`; ValueError when it is not a TFLite model (or holds more than one subgraph)."""
  import tflite

  with open(path, "rb") as f:
    buf = f.read()
  if len(buf) < 8 or buf[4:8] != b"TFL3":
    raise ValueError(f"{path} is not a TensorFlow Lite model (no 'TFL3' file identifier)")
  try:
    return _parse(tflite.Model.GetRootAs(buf, 0), buf, path)
  except (struct.error, IndexError, TypeError, UnicodeDecodeError) as e:
    # flatbuffers reads offsets past the end of a cut file (struct.error, IndexError).
    raise ValueError(f"{path} is truncated or damaged ({type(e).__name__} while reading it); "
                     "download or export it again") from None


def _parse(model: Any, buf: bytes, path: str) -> Graph:
  from tflite.utils import BUILTIN_OPCODE2NAME

  if model.SubgraphsLength() != 1:
    raise ValueError(f"{path} has {model.SubgraphsLength()} subgraphs; a MobileNet classifier "
                     "has one")
  graph = model.Subgraphs(0)
  tensors = []
  for i in range(graph.TensorsLength()):
    t = graph.Tensors(i)
    if t.Type() not in _DTYPES:
      raise ValueError(f"{path}: tensor {t.Name().decode()!r} has TFLite type {t.Type()}, which "
                       "this converter does not read (float32/16, int8/16/32/64, uint8)")
    dtype = _DTYPES[t.Type()]
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    data = None
    buffer = model.Buffers(t.Buffer())
    if buffer is not None and buffer.Offset() > 1:   # large models keep buffers after the table
      raw = np.frombuffer(buf, np.uint8, buffer.Size(), buffer.Offset())
    elif buffer is not None and buffer.DataLength():
      raw = buffer.DataAsNumpy()
    else:
      raw = None
    if raw is not None:
      data = np.frombuffer(raw.tobytes(), dtype).reshape(shape)
    scale = zero_point = None
    axis = 0
    q = t.Quantization()
    if q is not None and q.ScaleLength():
      scale, axis = q.ScaleAsNumpy().astype(np.float32), q.QuantizedDimension()
      zero_point = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else \
          np.zeros(1, np.int64)
    tensors.append(Tensor(i, t.Name().decode(errors="replace"), shape, dtype, scale, zero_point,
                          axis, data))
  ops = []
  for j in range(graph.OperatorsLength()):
    op = graph.Operators(j)
    code = model.OperatorCodes(op.OpcodeIndex())
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = BUILTIN_OPCODE2NAME.get(builtin, f"builtin {builtin}")
    if name == "CUSTOM":
      name = f"CUSTOM {code.CustomCode().decode(errors='replace')}"
    inputs = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
    outputs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
    ops.append(Op(j, name, inputs, outputs, _options(op, name)))
  metadata = tuple(model.Metadata(i).Name().decode(errors="replace")
                   for i in range(model.MetadataLength()) if model.Metadata(i).Name() is not None)
  return Graph(path, tensors, ops, tuple(int(i) for i in graph.InputsAsNumpy()),
               tuple(int(i) for i in graph.OutputsAsNumpy()), metadata)
