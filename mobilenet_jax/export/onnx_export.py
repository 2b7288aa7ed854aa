"""ONNX export: jax2onnx, then the operators and layout ONNX runtimes run fastest.

jax2onnx writes each NHWC convolution of the JAX program as Transpose -> Conv -> Transpose and
activations as Max/Min/Mul/Div. Three steps make the file what torchvision's export is:

1. `onnx_rules.fuse_operators`: Relu, Clip, HardSwish, HardSigmoid and ReduceMean operators;
2. the input is NCHW by default (`layout="nchw"`, what torchvision and ONNX image models take),
   or NHWC as the JAX model takes it (`layout="nhwc"`: one Transpose at the input);
3. ONNX Runtime's *basic* graph optimisations, run offline (its documented "offline mode"):
   transposes pushed through elementwise operators until they cancel, and the bias Add folded into
   the Conv. Basic rewrites are those ONNX Runtime applies for every execution provider; the file
   holds only standard ONNX operators and runs in any ONNX runtime.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from mobilenet_jax.export.program import Program

LAYOUTS = ("nchw", "nhwc")
OPSET = 18   # jax2onnx writes ReduceMean/ReduceSum with axes as an input (opset >= 18)


def check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f"ONNX layout must be one of {LAYOUTS}, got {layout!r}")


def program_to_onnx(program: Program, layout: str = "nchw") -> Any:
  """The program as an `onnx.ModelProto` with input "images" and output "logits"."""
  check_layout(layout)
  import onnx
  from jax2onnx import to_onnx

  from mobilenet_jax.export.onnx_rules import fuse_operators

  # jax2onnx imports every plugin it ships when it starts, and logs a warning for each optional
  # library it has plugins for (equinox, dm_pix) that is not installed; MobileNets need none.
  logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
  proto = to_onnx(program.function, [program.input_spec], model_name="mobilenet", opset=OPSET,
                  inputs_as_nchw=[0] if layout == "nchw" else None, input_names=["images"],
                  output_names=["logits"])
  proto = fuse_operators(proto)
  proto = _runtime_basic_optimizations(proto)
  onnx.checker.check_model(proto)
  return proto


def _runtime_basic_optimizations(proto: Any) -> Any:
  """ONNX Runtime's basic graph optimisations applied to `proto`, saved as a standard ONNX model."""
  import onnx
  import onnxruntime as ort

  with tempfile.TemporaryDirectory() as tmp:
    source, optimized = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
    onnx.save(proto, source)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = optimized
    options.log_severity_level = 3   # its notes on removing unused initializers are expected
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    result = onnx.load(optimized)
  # The runtime lists every operator domain it knows; keep those the graph uses.
  used = {node.domain for node in result.graph.node}
  kept = [o for o in result.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
  del result.opset_import[:]
  result.opset_import.extend(kept)
  return result
