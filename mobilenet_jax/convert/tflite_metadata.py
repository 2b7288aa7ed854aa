"""What a `.tflite` file exported here says about itself: the network, and how to prepare its images.

Exported files fold BatchNorm, pool with a sum and (int8) write hard-swish without its `/ 6`: graphs
that the reader of released MobileNets (`tflite_source.py`) does not turn back into our model. So
each file carries a TFLite metadata entry (`Model.metadata`: a name and a buffer) named
`mobilenet_jax`, holding `ExportInfo` as JSON. `python -m mobilenet_jax.export` writes it
(`add_metadata`); `mobilenet_jax.weights.load` reads it (`read_metadata`) so that
`python -m mobilenet_jax.evaluate --runtime=litert` scores the file in LiteRT.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any, Mapping, Optional, Union

import numpy as np

KEY = "mobilenet_jax"
INPUT_TYPES = ("float32", "uint8")


@dataclasses.dataclass(frozen=True)
class ExportInfo:
  """The JSON of the metadata entry."""
  description: str                  # the network and its options, for reports
  resolution: int
  input: str = "float32"            # "float32": normalised images; "uint8": 0..255 pixels
  normalization: Optional[str] = None   # uint8 input: how the file normalises its pixels
  padding: str = "same"             # the weights' padding ("same": TF weights, "symmetric": PyTorch)
  preprocessing: Optional[Mapping[str, Any]] = None   # `EvalRecipe.to_dict()` of the weights

  def to_json(self) -> bytes:
    return json.dumps(dataclasses.asdict(self)).encode()

  @classmethod
  def from_json(cls, raw: bytes) -> "ExportInfo":
    values = json.loads(raw)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def add_metadata(data: bytes, info: ExportInfo) -> bytes:
  """`data` (a `.tflite` flatbuffer) with the metadata entry `KEY` holding `info`."""
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils

  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(info.to_json(), np.uint8)
  model.buffers.append(buffer)
  entry = schema.MetadataT()
  entry.name, entry.buffer = KEY, len(model.buffers) - 1
  model.metadata = [m for m in (model.metadata or []) if m.name != KEY.encode()] + [entry]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(file: Union[str, bytes]) -> Optional[ExportInfo]:
  """The `KEY` metadata entry of `file` (a path, or the file's bytes); None for a file exported
  elsewhere."""
  import tflite

  if isinstance(file, str):
    with open(file, "rb") as f:
      buf = f.read()
  else:
    buf = file
  if len(buf) < 8 or buf[4:8] != b"TFL3":
    return None
  try:
    raw = _entry(tflite.Model.GetRootAs(buf, 0), buf)
  except (struct.error, IndexError, AttributeError, UnicodeDecodeError):
    return None   # a truncated or damaged file: its reader (`read_tflite`) says so
  if raw is None:
    return None
  try:
    info = ExportInfo.from_json(raw)
  except (ValueError, TypeError, AttributeError):
    info = None
  if info is None or not isinstance(info.description, str):
    raise ValueError(f"the {KEY} metadata of this .tflite file is damaged (not the JSON an export "
                     "writes); export the weights again")
  return info


def _entry(model: Any, buf: bytes) -> Optional[bytes]:
  for i in range(model.MetadataLength()):
    entry = model.Metadata(i)
    if entry.Name() is None or entry.Name().decode() != KEY:
      continue
    buffer = model.Buffers(entry.Buffer())
    if buffer.Offset() > 1:   # stored after the flatbuffer (files over 2 GB)
      return buf[buffer.Offset():buffer.Offset() + buffer.Size()]
    return buffer.DataAsNumpy().tobytes()
  return None
