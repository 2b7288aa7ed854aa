"""Speed of MobileNet V1/V2/V3 in JAX against PyTorch and Keras-on-JAX, on this machine, in one run.

    python -m mobilenet_jax.tools.benchmark                  # V1, V2, V3-L, V3-S; batch 32; 224; f32
    python -m mobilenet_jax.tools.benchmark --models v2,v3_small --batch 1,32 --dtype float32,bfloat16 \\
        --frameworks jax,torch --repeats 7 --json experiments/benchmark_results/cpu.json

For each model, batch, resolution and dtype it prints inference images/s, batch-1 latency, training-step
images/s (forward, backward and an SGD-momentum update with BatchNorm in train mode), compile time,
peak memory of the compiled program (`memory_analysis()`), and the achieved FLOP/s as a fraction of
this machine's matmul peak, measured in the same run with a large matmul. Frameworks are timed in
interleaved rounds (JAX, torch, Keras, JAX, ...) so that load from other processes hits all of them
alike; each figure is the median of `--repeats` timed calls after warm-up.

Two JAX rows: `jax` is the fast inference program (`mobilenet_jax.inference_function`: BatchNorm
folded, and on CPU the CPU inference engine); `jax_apply` is a plain `jax.jit(model.apply)` of the
network, as a newcomer writes it (the model's default kernels; its training step is `jax`'s). torch runs torchvision's models (timm's for V1) under
`torch.inference_mode`, Keras runs `keras.applications` on the JAX backend. Only jax, flax and optax
are needed; torch/torchvision/timm and keras are used where installed.

On Linux/glibc the command restarts itself with GLIBC_TUNABLES that keep freed memory in the process
(`--malloc retain`, `host_memory.py`): otherwise each XLA:CPU training step page-faults its whole
multi-GB buffer in again (V2: ~1.3 s of kernel time per ~2.3 s step on this 2-core machine).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet_jax.compilation_cache import enable_compilation_cache
from mobilenet_jax.models.inference import inference_function
from mobilenet_jax.models.initialization import init_variables as models_init_variables
from mobilenet_jax.models.kernels import KERNELS, resolve_kernels
from mobilenet_jax.models.registry import create_model
from mobilenet_jax.models.xla_cpu.inference import CPU_MICRO_BATCH, CPU_SIDE_BY_SIDE, loop_layout
from mobilenet_jax.tools import host_memory
from mobilenet_jax.tools.random_weights import with_batch_statistics
from mobilenet_jax.profile import count_madds

MODELS = {"v1": "mobilenet_v1", "v2": "mobilenet_v2", "v3_large": "mobilenet_v3_large",
          "v3_small": "mobilenet_v3_small"}
# The same architectures in the other frameworks: (library, constructor name).
TORCH_MODELS = {"mobilenet_v1": ("timm", "mobilenetv1_100"),
                "mobilenet_v2": ("torchvision", "mobilenet_v2"),
                "mobilenet_v3_large": ("torchvision", "mobilenet_v3_large"),
                "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small")}
KERAS_MODELS = {"mobilenet_v1": "MobileNet", "mobilenet_v2": "MobileNetV2",
                "mobilenet_v3_large": "MobileNetV3Large", "mobilenet_v3_small": "MobileNetV3Small"}
FRAMEWORKS = ("jax", "jax_apply", "torch", "keras")   # the default set; see EXPORT_FRAMEWORKS
MALLOC_MODES = ("retain", "default")
MODES = ("infer", "latency", "train")
DTYPES = ("float32", "bfloat16")
NUM_CLASSES = 1000
LEARNING_RATE, MOMENTUM = 0.01, 0.9


@dataclasses.dataclass
class Runner:
  """One framework's prepared step: `step()` runs it once and waits for the result."""
  step: Callable[[], Any]
  compile_s: Optional[float] = None     # JAX: lower + compile; others: first call minus a timed one
  peak_bytes: Optional[int] = None      # compiled program's memory (JAX) or CUDA peak (torch)
  xla_flops: Optional[float] = None     # XLA's own count for the step, for reference
  note: str = ""


@dataclasses.dataclass
class Result:
  """One (model, framework, mode, batch, resolution, dtype) measurement."""
  model: str
  framework: str
  mode: str
  batch: int
  resolution: int
  dtype: str
  seconds: list[float]
  images_per_s: float
  latency_ms: float
  compile_s: Optional[float]
  peak_mb: Optional[float]
  model_gflops: float                   # per step, from the papers' MAdds (x2 FLOPs, x3 training)
  peak_fraction: float                  # achieved model FLOP/s over the measured matmul peak
  xla_gflops: Optional[float] = None
  note: str = ""


# ----------------------------------------------------------------------------------------------
# Machine set-up


def load_average() -> Optional[float]:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def time_calls(step: Callable[[], Any], count: int) -> list[float]:
  times = []
  for _ in range(count):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def measure_matmul_peak(dtype: str, size: int, repeats: int) -> float:
  """FLOP/s of a `size`x`size` matmul through XLA on the default device (the roofline's ceiling)."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(jnp.matmul).lower(a, a).compile()
  f(a, a).block_until_ready()
  # The best call, not the median: a ceiling, and load from other processes only lowers it.
  return 2 * size**3 / min(time_calls(lambda: f(a, a).block_until_ready(), repeats))


def measure_torch_matmul_peak(dtype: str, size: int, repeats: int, device: str) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  a = torch.ones(size, size, dtype=getattr(torch, dtype), device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step():
    torch.matmul(a, a)
    sync()
  step()
  return 2 * size**3 / min(time_calls(step, repeats))


# ----------------------------------------------------------------------------------------------
# JAX


def _compiled_peak_bytes(compiled: Any) -> Optional[int]:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _lowered_flops(lowered: Any) -> Optional[float]:
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _compile(fn: Callable[..., Any], *args: Any, donate: Sequence[int] = ()) -> tuple[Any, float, Any]:
  start = time.perf_counter()
  if not hasattr(fn, "lower"):
    fn = jax.jit(fn, donate_argnums=tuple(donate))
  lowered = fn.lower(*args)
  compiled = lowered.compile()
  return compiled, time.perf_counter() - start, lowered


@functools.lru_cache(maxsize=1)
def _cached_init(model: Any, resolution: int) -> Any:
  return models_init_variables(model, resolution, seed=0)


def init_variables(model: Any, resolution: int) -> Any:
  """`model.init` (float32 parameters whatever the compute dtype), reused across batch sizes and
  modes of the same model: compiling an initialiser costs seconds on a CPU."""
  return _cached_init(model.clone(dtype=None), resolution)


def jax_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
               options: argparse.Namespace) -> Runner:
  model = create_model(name, num_classes=NUM_CLASSES, kernels=options.kernels,
                       dtype=None if dtype == "float32" else jnp.dtype(dtype))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((batch, resolution, resolution, 3), np.float32))
  variables = init_variables(model, resolution)
  if mode in ("infer", "latency"):
    notes = ["BN folded"]
    if resolve_kernels(options.kernels) == "cpu":
      cpu_options = dict(micro_batch=options.micro_batch, side_by_side=options.side_by_side)
      size, count = loop_layout(batch, options.micro_batch, options.side_by_side)
      notes += [f"micro-batch {size}"] * bool(size) + [f"{count} side by side"] * (count > 1)
    else:
      cpu_options = {}
    predict, variables = inference_function(model, variables, **cpu_options)
    note = ", ".join(notes)
    compiled, compile_s, lowered = _compile(predict, variables, images)
    return Runner(lambda: compiled(variables, images).block_until_ready(), compile_s,
                  _compiled_peak_bytes(compiled), _lowered_flops(lowered), note)

  import optax  # pylint: disable=g-import-not-at-top
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32)

  def train_step(state, images, labels, key):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"], rngs={"dropout": key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
      return loss.mean(), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  params = jax.tree.map(jnp.copy, variables["params"])  # the step donates them; keep the cache
  state = [(params, jax.tree.map(jnp.copy, variables["batch_stats"]), tx.init(params))]
  key = jax.random.key(1)
  compiled, compile_s, lowered = _compile(train_step, state[0], images, labels, key, donate=(0,))

  def step():
    state[0], loss = compiled(state[0], images, labels, key)
    loss.block_until_ready()
  return Runner(step, compile_s, _compiled_peak_bytes(compiled), _lowered_flops(lowered))


def jax_apply_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
                     options: argparse.Namespace) -> Runner:
  """`jax.jit(model.apply)` of the unfolded network, for inference; no separate training step."""
  if mode == "train":
    raise ValueError("jax_apply measures inference only (its training step is jax's)")
  model = create_model(name, num_classes=NUM_CLASSES, kernels=options.kernels,
                       dtype=None if dtype == "float32" else jnp.dtype(dtype))
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (batch, resolution, resolution, 3), np.float32))
  variables = init_variables(model, resolution)
  apply = jax.jit(functools.partial(model.apply, train=False))
  compiled, compile_s, lowered = _compile(apply, variables, images)
  return Runner(lambda: compiled(variables, images).block_until_ready(), compile_s,
                _compiled_peak_bytes(compiled), _lowered_flops(lowered), "jax.jit(model.apply)")


# ----------------------------------------------------------------------------------------------
# PyTorch


def torch_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
                 options: argparse.Namespace) -> Runner:
  import torch  # pylint: disable=g-import-not-at-top
  library, constructor = TORCH_MODELS[name]
  if library == "timm":
    import timm  # pylint: disable=g-import-not-at-top
    model = timm.create_model(constructor, num_classes=NUM_CLASSES)
  else:
    import torchvision  # pylint: disable=g-import-not-at-top
    model = getattr(torchvision.models, constructor)(num_classes=NUM_CLASSES)
  device = options.torch_device
  channels_last = (options.torch_channels_last == "on"
                   or (options.torch_channels_last == "auto" and device == "cuda"))
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(device=device, memory_format=memory_format)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, resolution, resolution, generator=generator)
  images = images.to(device=device, memory_format=memory_format)
  labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
  autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if dtype == "bfloat16"
              else contextlib.nullcontext())
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if options.torch_compile:
    model = torch.compile(model)
  note = "+".join(n for n, on in (("channels_last", channels_last),
                                  ("torch.compile", options.torch_compile),
                                  ("bf16 autocast", dtype == "bfloat16")) if on)

  if mode in ("infer", "latency"):
    model.eval()

    def step():
      with torch.inference_mode(), autocast:
        model(images)
      sync()
  else:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def step():
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
      loss.backward()
      optimizer.step()
      sync()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  first = time_calls(step, 1)[0]
  second = time_calls(step, 1)[0]
  peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
  return Runner(step, max(first - second, 0.0), peak, None, note)


# ----------------------------------------------------------------------------------------------
# Keras 3 on the JAX backend


def keras_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
                 options: argparse.Namespace) -> Runner:
  del options
  import keras  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() != "jax":
    raise RuntimeError(f"keras runs on the {keras.backend.backend()!r} backend; set "
                       "KERAS_BACKEND=jax before anything imports keras")
  previous_policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
  try:
    constructor = getattr(keras.applications, KERAS_MODELS[name])
    kwargs = dict(weights=None, input_shape=(resolution, resolution, 3), classes=NUM_CLASSES,
                  classifier_activation=None)
    if name.startswith("mobilenet_v3"):
      kwargs["include_preprocessing"] = False
    model = constructor(**kwargs)
  finally:
    keras.config.set_dtype_policy(previous_policy)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, resolution, resolution, 3), np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  if mode in ("infer", "latency"):
    step = lambda: model.predict_on_batch(images)
  else:
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    step = lambda: model.train_on_batch(images, labels)
  first = time_calls(step, 1)[0]
  second = time_calls(step, 1)[0]
  return Runner(step, max(first - second, 0.0), None, None, "predict_on_batch"
                if mode != "train" else "train_on_batch")


RUNNERS = {"jax": jax_runner, "jax_apply": jax_apply_runner, "torch": torch_runner,
           "keras": keras_runner}


# ----------------------------------------------------------------------------------------------
# Deployment runtimes (inference only, float32): our exports (`mobilenet_jax.export`) beside the
# reference libraries' own (`tools/peer_exports.py`), in ONNX Runtime and LiteRT with XNNPACK.

EXPORT_FRAMEWORKS = ("ort", "ort_torchvision", "litert", "litert_keras", "litert_int8",
                     "litert_keras_int8")
# (ours, theirs) pairs compared in the report: same runtime, different exporter; int8 vs float
# (ours, and Keras's).
EXPORT_PAIRS = (("ort", "ort_torchvision"), ("litert", "litert_keras"), ("litert_int8", "litert"),
                ("litert_int8", "litert_keras_int8"), ("litert_keras_int8", "litert_keras"))


def _deploy_threads(options: argparse.Namespace) -> int:
  return options.threads or os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def _export_file(kind: str, name: str, resolution: int, batch: int) -> bytes:
  """The deployment file `kind` of `name` (random weights and data statistics), made once."""
  import tempfile  # pylint: disable=g-import-not-at-top

  from mobilenet_jax import export  # pylint: disable=g-import-not-at-top
  from mobilenet_jax.tools import peer_exports  # pylint: disable=g-import-not-at-top

  if kind in ("torchvision", "keras", "keras_int8"):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "model")
      if kind == "torchvision":
        peer_exports.torchvision_onnx(name, resolution, path)
      else:
        peer_exports.keras_tflite(name, resolution, path, int8=kind == "keras_int8")
      with open(path, "rb") as f:
        return f.read()
  model = create_model(name, num_classes=NUM_CLASSES)
  # Random images: calibration for int8, and BatchNorm statistics that give the activations a
  # trained network's ranges (XNNPACK's int8 kernels depend on them: tools/random_weights.py).
  images = np.random.default_rng(0).standard_normal(
      (max(batch, 8), resolution, resolution, 3)).astype(np.float32)
  variables = with_batch_statistics(model, init_variables(model, resolution), images)
  if kind == "onnx":
    return export.to_onnx(model, variables, resolution=resolution)
  if kind == "tflite":
    return export.to_tflite(model, variables, resolution=resolution, batch=batch)
  return export.to_tflite_int8(model, variables, resolution=resolution, batch=batch,
                               calibration=images)


def _check_deploy_mode(framework: str, mode: str, dtype: str) -> None:
  if mode == "train" or dtype != "float32":
    raise ValueError(f"{framework} measures float32 inference only")


def _ort_runner(kind: str, framework: str, name: str, mode: str, batch: int, resolution: int,
                dtype: str, options: argparse.Namespace) -> Runner:
  _check_deploy_mode(framework, mode, dtype)
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  data = _export_file(kind, name, resolution, 0)
  session_options = ort.SessionOptions()
  session_options.intra_op_num_threads = _deploy_threads(options)
  # Two sessions take turns in one process: with ORT's default spin-waiting, one session's idle
  # workers spin on the cores the other needs, and b1 latencies of either swing by 15-20% from run
  # to run (0.83x-1.12x for the same pair); without it they repeat within 3%.
  session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  session = ort.InferenceSession(data, session_options, providers=["CPUExecutionProvider"])
  images = np.random.default_rng(0).standard_normal(
      (batch, 3, resolution, resolution)).astype(np.float32)
  feed = {session.get_inputs()[0].name: images}
  return Runner(lambda: session.run(None, feed), time.perf_counter() - start, None, None,
                f"{kind} export, ORT {ort.__version__}, {_deploy_threads(options)} threads")


def _litert_runner(kind: str, framework: str, name: str, mode: str, batch: int, resolution: int,
                   dtype: str, options: argparse.Namespace) -> Runner:
  _check_deploy_mode(framework, mode, dtype)
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  # Keras's files have a dynamic batch (resized here); ours are exported at the batch they run.
  data = _export_file(kind, name, resolution, 0 if kind.startswith("keras") else batch)
  interpreter = Interpreter(model_content=data, num_threads=_deploy_threads(options))
  detail = interpreter.get_input_details()[0]
  if detail["shape"][0] != batch:
    interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
  interpreter.allocate_tensors()
  images = np.random.default_rng(0).standard_normal((batch, resolution, resolution, 3))
  interpreter.set_tensor(detail["index"], images.astype(np.float32))
  return Runner(interpreter.invoke, time.perf_counter() - start, None, None,
                f"{kind} export, LiteRT + XNNPACK, {_deploy_threads(options)} threads")


RUNNERS.update({
    "ort": functools.partial(_ort_runner, "onnx", "ort"),
    "ort_torchvision": functools.partial(_ort_runner, "torchvision", "ort_torchvision"),
    "litert": functools.partial(_litert_runner, "tflite", "litert"),
    "litert_keras": functools.partial(_litert_runner, "keras", "litert_keras"),
    "litert_int8": functools.partial(_litert_runner, "tflite_int8", "litert_int8"),
    "litert_keras_int8": functools.partial(_litert_runner, "keras_int8", "litert_keras_int8"),
})


def print_export_ratios(results: list[Result]) -> None:
  """Ours over theirs in the same runtime (>1: ours faster), from the same interleaved rounds."""
  by_key = {(r.model, r.framework, r.mode, r.batch, r.resolution): r for r in results}
  lines = []
  for model, resolution in dict.fromkeys((r.model, r.resolution) for r in results):
    for mine, theirs in EXPORT_PAIRS:
      cells = []
      for (mode, batch) in sorted({(r.mode, r.batch) for r in results if r.mode != "train"}):
        a = by_key.get((model, mine, mode, batch, resolution))
        b = by_key.get((model, theirs, mode, batch, resolution))
        if a and b:
          cells.append(f"{'latency' if mode == 'latency' else 'infer'} b{batch} "
                       f"{a.images_per_s / b.images_per_s:.2f}x")
      if cells:
        lines.append(f"  {model:<20} {resolution:>4} {mine:<17} vs {theirs:<17} " + ", ".join(cells))
  if lines:
    print("\nexports, same runtime (>1: the first faster)")
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Measurement and report


def measure(name: str, mode: str, batch: int, resolution: int, dtype: str,
            frameworks: Sequence[str], options: argparse.Namespace, peaks: dict[str, float],
            madds: int) -> list[Result]:
  """Prepares every framework's step, then times them in interleaved rounds."""
  runners = {}
  for framework in frameworks:
    if (framework == "jax_apply" or framework in EXPORT_FRAMEWORKS) and mode == "train":
      continue  # the same training step as "jax"; the deployment runtimes do not train
    try:
      runners[framework] = RUNNERS[framework](name, mode, batch, resolution, dtype, options)
    except Exception as error:  # pylint: disable=broad-except
      print(f"  [{framework}] {name} {mode} skipped: {type(error).__name__}: {error}",
            file=sys.stderr)
  repeats = options.latency_repeats if mode == "latency" else options.repeats
  for runner in runners.values():
    time_calls(runner.step, options.warmup)
  times = {framework: [] for framework in runners}
  for _ in range(repeats):
    for framework, runner in runners.items():
      time.sleep(options.settle_s)  # lets the previous framework's worker threads go idle
      times[framework] += time_calls(runner.step, 1)
  flops = 2.0 * madds * batch * (3 if mode == "train" else 1)
  results = []
  for framework, runner in runners.items():
    seconds = statistics.median(times[framework])
    results.append(Result(
        name, framework, mode, batch, resolution, dtype, times[framework], batch / seconds,
        seconds * 1e3, runner.compile_s,
        None if runner.peak_bytes is None else runner.peak_bytes / 2**20, flops / 1e9,
        flops / seconds / peaks[dtype],
        None if runner.xla_flops is None else runner.xla_flops / 1e9, runner.note))
  return results


def _fmt(value: Optional[float], spec: str) -> str:
  return "-" if value is None else format(value, spec)


def print_table(results: list[Result], frameworks: Sequence[str]) -> None:
  """One block per (resolution, dtype): a row per model and framework, then JAX's speed-ups."""
  by_key = {(r.model, r.framework, r.mode, r.batch, r.resolution, r.dtype): r for r in results}
  configs = sorted({(r.resolution, r.dtype) for r in results})
  for resolution, dtype in configs:
    batches = sorted({r.batch for r in results if r.mode != "latency"
                      and (r.resolution, r.dtype) == (resolution, dtype)})
    models = list(dict.fromkeys(r.model for r in results))
    print(f"\n== {resolution}x{resolution}, {dtype} ==")
    width = max([10, *(len(f) + 1 for f in frameworks)])
    header = (f"{'model':<20}{'framework':<{width}}{'batch':>6}{'infer img/s':>13}{'train img/s':>13}"
              f"{'b1 ms':>9}{'compile s inf/train':>21}{'peak MB inf/train':>19}"
              f"{'% peak inf/train':>18}")
    print(header)
    print("-" * len(header))
    for model in models:
      for framework in frameworks:
        latency = by_key.get((model, framework, "latency", 1, resolution, dtype))
        for batch in batches:
          infer = by_key.get((model, framework, "infer", batch, resolution, dtype))
          train = by_key.get((model, framework, "train", batch, resolution, dtype))
          if not (infer or train or latency):
            continue
          get = lambda r, f: None if r is None else getattr(r, f)
          compile_s = f"{_fmt(get(infer, 'compile_s'), '.1f')}/{_fmt(get(train, 'compile_s'), '.1f')}"
          peak = f"{_fmt(get(infer, 'peak_mb'), '.0f')}/{_fmt(get(train, 'peak_mb'), '.0f')}"
          frac = (f"{_fmt(None if infer is None else 100 * infer.peak_fraction, '.1f')}/"
                  f"{_fmt(None if train is None else 100 * train.peak_fraction, '.1f')}")
          print(f"{model:<20}{framework:<{width}}{batch:>6}{_fmt(get(infer, 'images_per_s'), '.1f'):>13}"
                f"{_fmt(get(train, 'images_per_s'), '.1f'):>13}"
                f"{_fmt(get(latency, 'latency_ms'), '.1f'):>9}{compile_s:>21}{peak:>19}{frac:>18}")
    ours = [f for f in frameworks if f.startswith("jax")]
    others = [f for f in frameworks if not f.startswith("jax")]
    if not ours or not others:
      continue
    print("speed-up of JAX (>1: JAX faster; latency: their ms / JAX ms)")
    for model in models:
      for mine_name, other in ((m, o) for m in ours for o in others):
        cells = []
        for batch in batches:
          for mode in ("infer", "train"):
            mine = by_key.get((model, mine_name, mode, batch, resolution, dtype))
            theirs = by_key.get((model, other, mode, batch, resolution, dtype))
            if mine and theirs:
              cells.append(f"{mode} b{batch} {mine.images_per_s / theirs.images_per_s:.2f}x")
        mine = by_key.get((model, mine_name, "latency", 1, resolution, dtype))
        theirs = by_key.get((model, other, "latency", 1, resolution, dtype))
        if mine and theirs:
          cells.append(f"latency b1 {theirs.latency_ms / mine.latency_ms:.2f}x")
        if cells:
          print(f"  {model:<20} {mine_name:<9} vs {other:<6} " + ", ".join(cells))


def _csv(kind: Callable[[str], Any], choices: Optional[Sequence[str]] = None
         ) -> Callable[[str], list[Any]]:
  def parse(text: str) -> list[Any]:
    values = [kind(v) for v in text.split(",") if v]
    bad = [v for v in values if choices is not None and v not in choices]
    if bad or not values:
      raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list"
                                       + (f" of {', '.join(choices)}" if choices else ""))
    return values
  return parse


def _int_at_least(minimum: int) -> Callable[[str], int]:
  """An argparse type: an int >= `minimum`."""
  def parse(text: str) -> int:
    if not text.isdigit() or int(text) < minimum:
      raise argparse.ArgumentTypeError(f"{text!r}: expected an int >= {minimum}")
    return int(text)
  return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m mobilenet_jax.tools.benchmark", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--models", type=_csv(str, tuple(MODELS)), default=list(MODELS),
                      help="which networks")
  parser.add_argument("--batch", type=_csv(int), default=[32],
                      help="batch sizes for inference and training throughput")
  parser.add_argument("--resolution", type=_csv(int), default=[224], help="input sizes")
  parser.add_argument("--dtype", type=_csv(str, DTYPES), default=["float32"],
                      help="compute dtypes (parameters stay float32; torch uses bf16 autocast)")
  parser.add_argument("--frameworks", type=_csv(str, FRAMEWORKS + EXPORT_FRAMEWORKS),
                      default=list(FRAMEWORKS),
                      help="frameworks to run; those not installed are skipped. Deployment "
                      f"runtimes (float32 inference): {', '.join(EXPORT_FRAMEWORKS)}")
  parser.add_argument("--modes", type=_csv(str, MODES), default=list(MODES),
                      help="infer (throughput), latency (batch 1), train (one SGD step)")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
  parser.add_argument("--latency-repeats", type=int, default=20, help="timed batch-1 calls")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compilation")
  parser.add_argument("--settle-s", type=float, default=0.05,
                      help="pause before each timed call (other framework's threads go idle)")
  parser.add_argument("--kernels", choices=KERNELS, default="auto",
                      help="JAX layer kernels (models/kernels.py): auto = the CPU kernels on CPU")
  parser.add_argument("--micro-batch", type=_int_at_least(0), default=CPU_MICRO_BATCH,
                      help="CPU inference engine: images per micro-batch, 0 = whole batch")
  parser.add_argument("--side-by-side", type=_int_at_least(1), default=CPU_SIDE_BY_SIDE,
                      help="CPU inference engine: micro-batches computed side by side per step")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch intra-op threads; 0: as many as XLA uses (the CPU count)")
  parser.add_argument("--torch-device", default="auto", help="auto (cuda if available), cpu, cuda")
  parser.add_argument("--torch-channels-last", choices=("auto", "on", "off"), default="auto",
                      help="NHWC memory format for torch; auto: on for CUDA only")
  parser.add_argument("--torch-compile", action="store_true", help="wrap torch models in torch.compile")
  parser.add_argument("--malloc", choices=MALLOC_MODES, default="retain",
                      help="retain: restart with glibc tunables that keep freed memory in the "
                      "process (host_memory.py); default: glibc's defaults")
  parser.add_argument("--peak-size", type=int, default=0,
                      help="matmul size of the peak measurement; 0: 2048 on CPU, 8192 elsewhere")
  parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                      help="JAX's persistent compilation cache (default ~/.cache/mobilenet_jax/jax; "
                      "'' switches it off: then the compile times are those of a first start)")
  parser.add_argument("--json", metavar="PATH", help="write every measurement to this JSON file")
  args = parser.parse_args(argv)
  for flag in ("repeats", "latency_repeats"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag.replace('_', '-')} must be >= 1")
  if any(r < 32 for r in args.resolution):
    parser.error("--resolution must be >= 32 (five stride-2 layers)")
  return args


def _prepare_frameworks(args: argparse.Namespace) -> list[str]:
  """Imports the optional frameworks in a safe order; drops those not installed."""
  frameworks = []
  if {"torch", "keras", "ort_torchvision", "litert", "litert_int8"} & set(args.frameworks):
    # torch before anything that may import tensorflow (keras): the reverse order segfaults.
    try:
      import torch  # pylint: disable=g-import-not-at-top
      threads = args.threads or os.cpu_count() or 1
      torch.set_num_threads(threads)
      if args.torch_device == "auto":
        args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
      if "torch" in args.frameworks:
        print("torch is not installed: skipping it", file=sys.stderr)
  for framework in args.frameworks:
    if framework == "torch":
      try:
        import torch, torchvision  # pylint: disable=g-import-not-at-top,multiple-statements,unused-import
      except ImportError:
        continue
    if framework == "keras":
      os.environ.setdefault("KERAS_BACKEND", "jax")
      try:
        import keras  # pylint: disable=g-import-not-at-top,unused-import
      except ImportError:
        print("keras is not installed: skipping it", file=sys.stderr)
        continue
    frameworks.append(framework)
  return frameworks


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
  info = {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average_start": load_average()}
  try:
    with open("/proc/cpuinfo") as f:
      info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name")), "")
  except OSError:
    pass
  if "torch" in sys.modules:
    torch = sys.modules["torch"]
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_device=args.torch_device)
  if "keras" in sys.modules:
    info["keras"] = sys.modules["keras"].__version__
  return info


def main(argv: Optional[Sequence[str]] = None) -> list[Result]:
  args = parse_args(argv)
  malloc_retained = host_memory.memory_retained()
  if args.malloc == "retain" and not malloc_retained:
    print("note: freed memory is not retained (GLIBC_TUNABLES lacks host_memory.RETAIN_TUNABLES): "
          "run `python -m mobilenet_jax.tools.benchmark` from a shell, which restarts with them, or set "
          "them before starting Python; XLA's CPU steps then page-fault their buffers every call",
          file=sys.stderr)
  frameworks = _prepare_frameworks(args)
  cache = enable_compilation_cache(args.compilation_cache)
  info = machine_info(args)
  info["compilation_cache"] = cache
  info.update(malloc=args.malloc, malloc_retained=malloc_retained,
              glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
              transparent_hugepages=host_memory.transparent_hugepages())
  peak_size = args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192)
  peaks = {dtype: measure_matmul_peak(dtype, peak_size, 10) for dtype in args.dtype}
  info["matmul_peak_gflops"] = {d: p / 1e9 for d, p in peaks.items()}
  if "torch" in frameworks:
    info["torch_matmul_peak_gflops"] = {
        d: measure_torch_matmul_peak(d, peak_size, 10, args.torch_device) / 1e9
        for d in args.dtype}
  print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
  print(f"JAX kernels={args.kernels} ({resolve_kernels(args.kernels)}); "
        f"times: median of {args.repeats} calls ({args.latency_repeats} for batch-1 latency), "
        f"{args.warmup} warm-up calls; '% peak': model FLOPs (2 x MAdds, x3 for training) per "
        "second over the measured matmul peak of the same dtype")

  results: list[Result] = []
  for resolution in args.resolution:
    for dtype in args.dtype:
      for key in args.models:
        name = MODELS[key]
        madds = count_madds(create_model(name), resolution)
        jobs = [("latency", 1)] if "latency" in args.modes else []
        jobs += [(mode, batch) for batch in args.batch for mode in ("infer", "train")
                 if mode in args.modes]
        for mode, batch in jobs:
          new = measure(name, mode, batch, resolution, dtype, frameworks, args, peaks, madds)
          for r in new:
            print(f"  {r.model} {r.framework:<9} {r.mode:<7} b{r.batch} {r.resolution} {r.dtype}: "
                  f"{r.images_per_s:9.1f} img/s {r.latency_ms:9.2f} ms/call", flush=True)
          results += new
  info["load_average_end"] = load_average()
  print_table(results, frameworks)
  print_export_ratios(results)
  print(f"\nload average: start {info['load_average_start']}, end {info['load_average_end']}")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump({"machine": info, "options": {k: v for k, v in vars(args).items()},
                 "command": " ".join(["python -m mobilenet_jax.tools.benchmark", *(argv or sys.argv[1:])]),
                 "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)
    print(f"wrote {args.json}")
  return results


if __name__ == "__main__":
  if parse_args().malloc == "retain":
    host_memory.reexec_with_retained_memory(["-m", "mobilenet_jax.tools.benchmark", *sys.argv[1:]])
  main()
