"""Export to LiteRT/TFLite (float, int8), ONNX and StableHLO: each file computes JAX's logits.

Small networks (width 0.35, 64x64, 10 classes) with random weights *and* random BatchNorm
statistics and biases, so folding and every bias matter. Needs the `export` extra (tensorflow,
ai-edge-litert, jax2onnx, onnxscript, onnxruntime); skipped without it.
"""

import collections
import functools

import jax
import numpy as np
import pytest

pytest.importorskip("jax2onnx", reason='pip install -e ".[export]"')
pytest.importorskip("onnxruntime", reason='pip install -e ".[export]"')
pytest.importorskip("ai_edge_litert", reason='pip install -e ".[export]"')

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from flax import linen as nn  # noqa: E402

import mobilenet_jax as mj  # noqa: E402
from mobilenet_jax import export  # noqa: E402
from mobilenet_jax.export.constant_factors import fold_constant_factors  # noqa: E402
from mobilenet_jax.tools.random_weights import with_batch_statistics  # noqa: E402

RESOLUTION = 64
MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
TOLERANCE = 1e-4   # of the logits' scale (their largest magnitude)


def random_variables(model, seed=0):
  """Initial variables with every parameter perturbed and random BatchNorm statistics."""
  variables = mj.init_variables(model, RESOLUTION, seed)
  rng = np.random.default_rng(seed)
  noisy = lambda x: x + rng.normal(0.0, 0.1, x.shape).astype(np.float32)
  stats = {"mean": lambda x: rng.normal(0.0, 0.2, x.shape).astype(np.float32),
           "var": lambda x: rng.uniform(0.5, 2.0, x.shape).astype(np.float32)}
  batch_stats = jax.tree_util.tree_map_with_path(lambda path, x: stats[path[-1].key](x),
                                                 variables["batch_stats"])
  return {"params": jax.tree.map(noisy, variables["params"]), "batch_stats": batch_stats}


def small(name, **options):
  model = mj.create_model(name, width_multiplier=0.35, num_classes=10, **options)
  return model, random_variables(model)


@pytest.fixture(scope="module")
def v3_small():
  return small("mobilenet_v3_small")


@pytest.fixture(scope="module")
def v2():
  return small("mobilenet_v2")


def images(batch, seed=1):
  return np.random.default_rng(seed).standard_normal(
      (batch, RESOLUTION, RESOLUTION, 3)).astype(np.float32)


def jax_logits(model, variables, x):
  return np.asarray(_jitted_logits(model.clone(conv_norm_act=mj.ConvNormAct), variables, x))


@functools.partial(jax.jit, static_argnums=0)
def _jitted_logits(model, variables, x):
  # One compilation per network (eager, every layer compiles on its own: ~3x the CPU time).
  return model.apply(variables, x, train=False)


def relative_error(ours, reference):
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def run_tflite(data, x):
  interpreter = Interpreter(model_content=data, num_threads=1)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def tflite_ops(data):
  return collections.Counter(op["op_name"]
                             for op in Interpreter(model_content=data)._get_ops_details())


def run_onnx(data, x):
  session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
  return session.run(None, {"images": x})[0]


def onnx_ops(data):
  return collections.Counter(node.op_type for node in onnx.load_from_string(data).graph.node)


@pytest.mark.parametrize("name", MODELS)
def test_float_exports_compute_jax_logits(name):
  """TFLite (batch 2), ONNX and StableHLO (dynamic batch, run at 3) equal JAX's logits."""
  model, variables = small(name)
  x2, x3 = images(2), images(3, seed=2)
  both = jax_logits(model, variables, np.concatenate([x2, x3]))  # one batch: one compilation
  tflite = export.to_tflite(model, variables, resolution=RESOLUTION, batch=2)
  assert relative_error(run_tflite(tflite, x2), both[:2]) <= TOLERANCE
  onnx_file = export.to_onnx(model, variables, resolution=RESOLUTION)
  reference = both[2:]
  assert relative_error(run_onnx(onnx_file, x3.transpose(0, 3, 1, 2)), reference) <= TOLERANCE
  stablehlo = export.to_stablehlo(model, variables, resolution=RESOLUTION)
  exported = jax.export.deserialize(bytearray(stablehlo))
  assert relative_error(np.asarray(exported.call(x3)), reference) <= TOLERANCE

  # What the runtimes fuse: TFLite convolutions carry their activations (no separate ReLU/ReLU6
  # or MAXIMUM/MINIMUM ops), and the ONNX graph has no transposes around its convolutions and no
  # activation spelled with Max/Min/Div.
  ops = tflite_ops(tflite)
  assert not {"RELU", "RELU6", "MAXIMUM", "MINIMUM", "BATCH_MATMUL"} & set(ops), ops
  assert ops["DEPTHWISE_CONV_2D"] > 0
  ops = onnx_ops(onnx_file)
  assert not {"Max", "Min", "Div", "ReduceSum"} & set(ops), ops
  assert ops["Transpose"] <= ops["ReduceMean"], ops   # squeeze-excite's pooled maps only


def test_onnx_nhwc_layout_and_fixed_batch(v2):
  model, variables = v2
  data = export.to_onnx(model, variables, resolution=RESOLUTION, batch=2, layout="nhwc")
  session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
  assert session.get_inputs()[0].shape == [2, RESOLUTION, RESOLUTION, 3]
  x = images(2)
  assert relative_error(run_onnx(data, x), jax_logits(model, variables, x)) <= TOLERANCE


def test_stablehlo_mlir_text(tmp_path, v3_small):
  model, variables = v3_small
  path = tmp_path / "m.mlir"
  export.to_stablehlo(model, variables, str(path), resolution=RESOLUTION, batch=1)
  text = path.read_text()
  assert "stablehlo.convolution" in text and "tensor<1x64x64x3xf32>" in text


def test_stablehlo_mlir_default_compiles_and_runs_in_iree(tmp_path, v3_small):
  """`export --format=stablehlo --out=m.mlir` with its default batch: IREE (a client other than
  XLA) compiles the file and computes JAX's logits."""
  compiler = pytest.importorskip("iree.compiler", reason="pip install iree-base-compiler")
  runtime = pytest.importorskip("iree.runtime", reason="pip install iree-base-runtime")
  from mobilenet_jax.export.cli import main
  from mobilenet_jax.pretrained import save_pretrained

  model, variables = v3_small
  checkpoint, out = tmp_path / "checkpoint", tmp_path / "m.mlir"
  save_pretrained(str(checkpoint), "mobilenet_v3_small",
                  {"width_multiplier": 0.35, "num_classes": 10}, variables)
  assert main([f"--weights={checkpoint}", "--format=stablehlo", f"--out={out}",
               f"--resolution={RESOLUTION}"]) == 0
  vmfb = compiler.compile_file(str(out), target_backends=["llvm-cpu"],
                               extra_args=["--iree-llvmcpu-target-cpu=generic"])
  context = runtime.SystemContext(config=runtime.Config("local-task"))
  context.add_vm_module(runtime.VmModule.copy_buffer(context.instance, vmfb))
  x = images(1)
  logits = np.asarray(context.modules.jit_function.main(x))
  assert relative_error(logits, jax_logits(model, variables, x)) <= TOLERANCE


def test_int8_is_full_integer_and_smaller(v2):
  model, variables = v2
  calibration = images(32, seed=3)
  float_file = export.to_tflite(model, variables, resolution=RESOLUTION)
  int8_file = export.to_tflite_int8(model, variables, resolution=RESOLUTION,
                                    calibration=calibration)
  # Per-channel scales and the flatbuffer's own bytes weigh more in a network this narrow; the
  # real V2 in test_export_real.py is about 4x smaller.
  assert len(float_file) / len(int8_file) > 2.4
  interpreter = Interpreter(model_content=int8_file)
  tensors = interpreter.get_tensor_details()
  kernels = [t for t in tensors if len(t["shape"]) == 4 and t["dtype"] == np.int8
             and len(t["quantization_parameters"]["scales"]) > 1]
  assert kernels, "no per-channel int8 convolution kernels"
  assert not any(t["dtype"] == np.float32 and len(t["shape"]) == 4 and t["shape"][0] > 1
                 for t in tensors), "a float32 weight tensor is left"
  ops = tflite_ops(int8_file)
  assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1, ops   # float32 in, float32 logits out
  x = images(1, seed=4)
  ours, reference = run_tflite(int8_file, x), jax_logits(model, variables, x)
  assert relative_error(ours, reference) < 0.2   # int8 rounding, not a different network


def _scalar_factors(jaxpr, computed):
  """The multiplications and divisions of a map computed from the input (`computed`: the variables
  that are) by a one-element constant, nested jits and custom derivatives included."""
  found = []
  for eqn in jaxpr.eqns:
    ins = [v for v in eqn.invars if not isinstance(v, jax.extend.core.Literal)]
    if not any(v in computed for v in ins):
      continue
    computed.update(eqn.outvars)
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _scalar_factors(inner, {w for v, w in zip(eqn.invars, inner.invars) if v in computed})
    if eqn.primitive.name in ("mul", "div") and any(v.aval.size == 1 for v in eqn.invars):
      found.append(eqn)
  return found


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_constant_factors_move_into_the_next_layer(name):
  """hard-swish's / 6, the gate's / 6 and the pools' / (H W) leave the int8 export's program, with
  the same logits (V3-Large also sums two maps that carry different factors: the stem's output and
  the first block's)."""
  model, variables = small(name)
  program = export.deployment_program(model, variables, RESOLUTION, batch=2)
  folded = fold_constant_factors(program.function, program.input_spec)
  x = images(2)
  before = jax.make_jaxpr(program.function)(x).jaxpr
  after = jax.make_jaxpr(folded)(x).jaxpr
  assert len(_scalar_factors(before, set(before.invars))) > 10
  assert _scalar_factors(after, set(after.invars)) == []
  assert relative_error(np.asarray(jax.jit(folded)(x)),
                        np.asarray(jax.jit(program.function)(x))) <= TOLERANCE


def test_int8_v3_runs_whole_in_xnnpack():
  """With a trained network's activation ranges (BatchNorm statistics of images), LiteRT's XNNPACK
  delegate takes the whole int8 MobileNetV3 file: one DELEGATE node, no HARD_SWISH, nothing left to
  TFLite's int8 kernels (what makes it faster than float, `docs/deploy.md`)."""
  model = mj.create_model("mobilenet_v3_small", width_multiplier=0.35, num_classes=10)
  calibration = images(8, seed=6)
  variables = with_batch_statistics(model, mj.init_variables(model, RESOLUTION), calibration)
  data = export.to_tflite_int8(model, variables, resolution=RESOLUTION, calibration=calibration)
  interpreter = Interpreter(model_content=data, num_threads=2)
  interpreter.allocate_tensors()
  ops = collections.Counter(op["op_name"] for op in interpreter._get_ops_details())
  assert "HARD_SWISH" not in ops and ops["DELEGATE"] == 1, ops
  x = calibration[:1]
  assert relative_error(run_tflite(data, x), jax_logits(model, variables, x)) < 0.2


def test_int8_uint8_input_takes_pixels(v3_small):
  model, variables = v3_small
  pixels = np.random.default_rng(5).integers(0, 256, (16, RESOLUTION, RESOLUTION, 3))
  pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255   # the calibration spans 0..255
  data = export.to_tflite_int8(model, variables, resolution=RESOLUTION,
                               calibration=pixels.astype(np.float32), input_type="uint8",
                               normalization="inception")
  detail = Interpreter(model_content=data).get_input_details()[0]
  assert detail["dtype"] == np.uint8 and detail["quantization"] == (1.0, 0)
  x = pixels[:1].astype(np.uint8)
  reference = jax_logits(model, variables, x.astype(np.float32) / 127.5 - 1.0)
  assert relative_error(run_tflite(data, x), reference) < 0.2


@pytest.mark.parametrize("call, message", [
    (lambda m, v: export.to_tflite(m, v, resolution=RESOLUTION, batch="dynamic"),
     "fixed batch"),
    (lambda m, v: export.to_onnx(m, v, resolution=RESOLUTION, batch=0), "batch must be"),
    (lambda m, v: export.to_onnx(m, v, resolution=RESOLUTION, batch="many"), "batch must be"),
    (lambda m, v: export.to_onnx(m, v, resolution=16), "resolution must be"),
    (lambda m, v: export.to_onnx(m, v, resolution=RESOLUTION, layout="nwhc"), "layout"),
    (lambda m, v: export.export(m, v, "coreml"), "format must be one of"),
    (lambda m, v: export.to_tflite_int8(m, v, resolution=RESOLUTION, calibration=images(4),
                                        input_type="uint8"), "normalization="),
    (lambda m, v: export.to_tflite_int8(m, v, resolution=RESOLUTION, calibration=images(4),
                                        input_type="int4"), "input type"),
    (lambda m, v: export.to_tflite_int8(m, v, resolution=RESOLUTION,
                                        calibration=np.zeros((4, 32, 32, 3), np.float32)),
     "calibration images must be"),
])
def test_bad_options_are_clear_errors(call, message, v3_small):
  model, variables = v3_small
  with pytest.raises(ValueError, match=message):
    call(model, variables)


def test_models_that_cannot_be_folded_are_clear_errors():
  import functools
  model = mj.create_model("mobilenet_v2", width_multiplier=0.35, num_classes=10,
                          norm_layer=functools.partial(nn.GroupNorm, num_groups=8))
  with pytest.raises(ValueError, match="only BatchNorm can be folded"):
    export.to_onnx(model, {"params": {}}, resolution=RESOLUTION)   # refused before folding
  with pytest.raises(ValueError, match="takes a mobilenet_jax MobileNet"):
    export.to_onnx(nn.Dense(3), {}, resolution=RESOLUTION)


def test_cli_round_trip(tmp_path, capsys, v3_small):
  from mobilenet_jax.export.cli import main
  from mobilenet_jax.pretrained import save_pretrained

  model, variables = v3_small
  checkpoint = tmp_path / "checkpoint"
  save_pretrained(str(checkpoint), "mobilenet_v3_small",
                  {"width_multiplier": 0.35, "num_classes": 10}, variables)
  out = tmp_path / "m.onnx"
  assert main([f"--weights={checkpoint}", "--format=onnx", f"--out={out}",
               f"--resolution={RESOLUTION}"]) == 0
  x = images(2)
  assert relative_error(run_onnx(out.read_bytes(), x.transpose(0, 3, 1, 2)),
                        jax_logits(model, variables, x)) <= TOLERANCE
  # Options that do not fit the format are refused with what to do.
  assert main([f"--weights={checkpoint}", "--format=tflite-int8", f"--out={out}"]) == 1
  assert "needs --calibration=DIR" in capsys.readouterr().err
  assert main([f"--weights={checkpoint}", "--format=onnx", f"--out={out}",
               f"--calibration={tmp_path}"]) == 1
  assert "apply to --format=tflite-int8 only" in capsys.readouterr().err
  assert main([f"--weights={checkpoint}", "--format=tflite", f"--out={out}",
               "--layout=nhwc"]) == 1
  assert "--layout applies to --format=onnx only" in capsys.readouterr().err


def test_exported_tflite_files_are_scored_by_evaluate(tmp_path, capsys, v2):
  """An exported file records its eval recipe and input; `python -m mobilenet_jax.evaluate
  --runtime=litert` scores it on the same prepared images as our model (float: JAX's logits;
  int8 with uint8 pixels: within int8 rounding), and the JAX runtime refuses it with what to do."""
  from PIL import Image

  from mobilenet_jax.convert import from_tflite
  from mobilenet_jax.convert.assemble import ConversionError
  from mobilenet_jax.convert.tflite_metadata import read_metadata
  from mobilenet_jax.data.eval_recipes import tf_slim
  from mobilenet_jax.evaluate import cli as evaluate
  from mobilenet_jax.evaluate.images import list_images, prepared_batches
  from mobilenet_jax.export.cli import main as export_main
  from mobilenet_jax.pretrained import save_pretrained
  from mobilenet_jax.weights import load

  model, variables = v2
  folder = tmp_path / "images"
  folder.mkdir()
  for i, pixels in enumerate(np.random.default_rng(7).integers(0, 256, (12, 80, 96, 3))):
    Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
  paths, _ = list_images(str(folder))
  recipe = tf_slim(RESOLUTION)
  reference = jax_logits(model, variables, next(prepared_batches(paths, recipe, len(paths))))

  float_file = tmp_path / "float.tflite"
  export.to_tflite(model, variables, str(float_file), resolution=RESOLUTION,
                   preprocessing=recipe.to_dict(), description="mobilenet_v2 x0.35")
  assert read_metadata(str(float_file)).preprocessing == recipe.to_dict()
  out = tmp_path / "float.json"
  assert evaluate.main([f"--weights={float_file}", f"--images={folder}", "--runtime=litert",
                        f"--json={out}"]) == 0
  scored = lambda path: evaluate.predict(load(path), paths, "litert", progress=False)
  exported = load(float_file)   # weights.load: LiteRT only, the recipe the file records
  assert exported.model is None and exported.description.startswith("mobilenet_v2 x0.35")
  assert (exported.recipe, exported.recipe_source) == (recipe, "recorded in the file")
  assert relative_error(scored(float_file), reference) <= TOLERANCE
  assert evaluate.main([f"--weights={float_file}", f"--images={folder}"]) == 1
  assert "--runtime=litert" in capsys.readouterr().err
  with pytest.raises(ConversionError, match="exported by mobilenet_jax"):
    from_tflite(str(float_file))

  checkpoint = tmp_path / "checkpoint"
  save_pretrained(str(checkpoint), "mobilenet_v2", {"width_multiplier": 0.35, "num_classes": 10},
                  variables)
  int8_file = tmp_path / "int8.tflite"
  assert export_main([f"--weights={checkpoint}", "--format=tflite-int8", f"--out={int8_file}",
                      f"--resolution={RESOLUTION}", f"--calibration={folder}",
                      "--input=uint8", "--allow_few_calibration_images"]) == 0
  assert "warning: int8 calibration on 12 image(s)" in capsys.readouterr().err
  meta = read_metadata(str(int8_file))
  assert meta.input == "uint8" and meta.normalization == "inception"
  assert relative_error(scored(int8_file), reference) < 0.2
