"""One run on a GPU: the model tests, JAX against PyTorch, the depthwise convolution, a profile.

    experiments/gpu_check.sh OUT_DIR                       # on the GPU machine, ~8 minutes
    python experiments/gpu_check.py OUT_DIR --tiny         # rehearsal on a CPU: tiny sizes

Writes OUT_DIR/gpu_check.log (everything printed, the tests' output included) and OUT_DIR/gpu_check.json
(the environment, every figure and every error; rewritten after each measurement, so a run cut short
keeps what it had). Four parts, each with its own time budget, and one failure loses none of the others:

  tests      the model-level tests that need no TensorFlow (models, layers, converters against torch),
             in a child process: pytest without xdist, test files whose module-level imports fail here
             (tensorflow, ml_collections, keras, ...) left out and named in the JSON.
  bench      the training step (forward, backward, SGD momentum, BatchNorm in train mode) and inference
             of V2, V3-Large, V3-Small (and V4 conv-small/medium where `mj.list_models()` has them), bf16
             compute with f32 parameters, against torchvision/timm with channels_last and bf16 autocast,
             eager and `torch.compile`, in interleaved rounds in this one process. Before it, the device's
             copy bandwidth (a large array copy, timed), against which each JAX step's bytes moved (the
             compiled program's `cost_analysis()['bytes accessed']`) give the fraction of the memory
             roofline.
  profile    a `jax.profiler` trace of V2's training step (the bench's program), summarised as the
             top operations by device time (read with `jax.profiler.ProfileData`), and the optimised
             program's op counts.
  depthwise  forward and backward of V2's depthwise layers (their shapes at the run's batch and size),
             XLA's grouped convolution (`feature_group_count=C`) against k*k shifted multiply-adds
             (differentiated by JAX) and the project's own shifted formulation where one is importable;
             float32 and bfloat16.

Only the public API is used (`mj.create_model`, `mj.init_variables`, `mj.inference_function`,
`mj.layer_costs`), with the model's default computation (XLA's own ops on a GPU); no TensorFlow,
tensorflow-datasets or ml-collections. Timings are for a report, never asserted.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import datetime
import gc
import glob
import importlib
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("tests", "bench", "profile", "depthwise")  # the profile reuses the bench's V2 program
# The model-level tests, most important first. A file whose module-level imports fail in this
# environment is left out (and named in the JSON); a file that is missing is skipped likewise.
TEST_FILES = ("test_models.py", "test_convert.py", "test_fold.py", "test_inference.py",
              "test_initialization.py", "test_norm_activation.py", "test_train_norm.py",
              "test_param_counts.py", "test_xla_cpu_kernels.py", "test_ablation_counts.py")
TINY_TEST_FILES = ("test_fold.py",)
# Measured in this order while the budget lasts: the goals are V2's and V3-Large's training step.
BENCH_ORDER = (("train", "mobilenet_v2"), ("train", "mobilenet_v3_large"),
               ("infer", "mobilenet_v2"), ("infer", "mobilenet_v3_large"),
               ("train", "mobilenet_v3_small"), ("infer", "mobilenet_v3_small"),
               ("train", "mobilenet_v4_conv_small"), ("train", "mobilenet_v4_conv_medium"),
               ("infer", "mobilenet_v4_conv_small"), ("infer", "mobilenet_v4_conv_medium"))
# PyTorch's best is the better of eager and torch.compile: always compiled for the goals' rows, for
# the others only while time is left.
GOALS = (("train", "mobilenet_v2"), ("train", "mobilenet_v3_large"))
# PyTorch counterparts: (library, constructor).
TORCH_MODELS = {"mobilenet_v2": ("torchvision", "mobilenet_v2"),
                "mobilenet_v3_large": ("torchvision", "mobilenet_v3_large"),
                "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small"),
                "mobilenet_v4_conv_small": ("timm", "mobilenetv4_conv_small"),
                "mobilenet_v4_conv_medium": ("timm", "mobilenetv4_conv_medium")}
NUM_CLASSES = 1000
LEARNING_RATE, MOMENTUM = 0.1, 0.9


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that differs between the GPU run and its CPU rehearsal."""
  batch: int
  resolution: int
  warmup: int               # calls of each runner before timing
  rounds: int               # interleaved rounds (each runner once per round)
  calls: int                # steps per timed call (the device runs them back to back)
  copy_mib: int             # array size of the bandwidth measurement
  profile_steps: int
  torch_compile_reserve_s: float  # beyond GOALS, torch.compile only while the bench has this left
  budgets: dict[str, float]  # seconds per part


GPU = Sizes(batch=256, resolution=224, warmup=3, rounds=5, calls=10, copy_mib=2048, profile_steps=3,
            torch_compile_reserve_s=100,
            budgets={"tests": 90, "bench": 270, "profile": 25, "depthwise": 40})
TINY = Sizes(batch=2, resolution=32, warmup=1, rounds=2, calls=2, copy_mib=8, profile_steps=2,
             torch_compile_reserve_s=0,
             budgets={"tests": 120, "bench": 240, "depthwise": 60, "profile": 60})


# ----------------------------------------------------------------------------------------------
# Output: one log (everything printed) and one JSON (rewritten after each measurement)


class Tee:
  """Writes to the terminal and to the log file."""

  def __init__(self, stream, log):
    self.stream, self.log = stream, log

  def write(self, text):
    self.stream.write(text)
    self.log.write(text)
    self.log.flush()
    return len(text)

  def flush(self):
    self.stream.flush()
    self.log.flush()

  def isatty(self):
    return False


class Report:
  """The JSON record; `save()` replaces the file atomically."""

  def __init__(self, path: str, data: dict[str, Any]):
    self.path, self.data = path, data

  def save(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1, default=str)
    os.replace(tmp, self.path)


def log(*args: Any) -> None:
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
  print(f"[{stamp}]", *args, flush=True)


def error_text(exc: BaseException) -> str:
  return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]


class Deadline:
  def __init__(self, seconds: float):
    self.end = time.monotonic() + seconds

  def left(self) -> float:
    return self.end - time.monotonic()


# ----------------------------------------------------------------------------------------------
# Environment


def environment() -> dict[str, Any]:
  env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                         "cpus": os.cpu_count(), "argv": sys.argv}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "timm", "pytest", "numpy"):
    try:
      env[name] = importlib.import_module(name).__version__
    except Exception as exc:  # pylint: disable=broad-except
      env[name] = f"unavailable: {error_text(exc)[:200]}"
  try:
    import jax  # pylint: disable=g-import-not-at-top
    env["jax_backend"] = jax.default_backend()
    env["jax_devices"] = [f"{d.platform}: {getattr(d, 'device_kind', d)}" for d in jax.devices()]
  except Exception as exc:  # pylint: disable=broad-except
    env["jax_devices"] = f"error: {error_text(exc)}"
  try:
    import torch  # pylint: disable=g-import-not-at-top
    if torch.cuda.is_available():
      env["torch_device"] = torch.cuda.get_device_name(0)
      env["torch_cuda"] = torch.version.cuda
      env["cudnn"] = torch.backends.cudnn.version()
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    env["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
  except Exception:  # pylint: disable=broad-except
    pass
  env.update({k: v for k, v in os.environ.items()
              if k.startswith(("XLA_", "JAX_", "CUDA_VISIBLE", "TF_GPU"))})
  return env


# ----------------------------------------------------------------------------------------------
# Part 1: the tests, in a child process


def module_level_imports(path: str) -> list[str]:
  """The modules a test file imports at module level (importorskip calls included)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  names = []
  for node in tree.body:
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.append(node.module)
      names += [f"{node.module}.{alias.name}" for alias in node.names]
    elif (isinstance(node, (ast.Assign, ast.Expr)) and isinstance(node.value, ast.Call)
          and getattr(node.value.func, "attr", "") == "importorskip" and node.value.args
          and isinstance(node.value.args[0], ast.Constant)):
      names.append(node.value.args[0].value)
  return names


_IMPORT_CHECK = """
import importlib, json, os, sys
sys.path[:0] = [os.path.join(sys.argv[2], "tests"), os.path.join(sys.argv[2], "experiments")]
failed = {}
for name in json.loads(sys.argv[1]):
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as exc:
    parent = name.rpartition(".")[0]   # `from package import function`: the package is enough
    if exc.name == name and parent and parent not in failed:
      continue
    failed[name] = f"{type(exc).__name__}: {exc}"
  except Exception as exc:
    failed[name] = f"{type(exc).__name__}: {exc}"
print("IMPORTS " + json.dumps(failed))
"""


def runnable_test_files(names: tuple[str, ...], env: dict[str, str]) -> tuple[list[str], dict]:
  """The test files whose module-level imports all succeed (checked in one child process)."""
  left_out, imports = {}, {}
  for name in names:
    path = os.path.join(ROOT, "tests", name)
    if not os.path.exists(path):
      left_out[name] = "no such file"
    else:
      imports[name] = module_level_imports(path)
  wanted = sorted({m for ms in imports.values() for m in ms})
  out = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, json.dumps(wanted), ROOT],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
  line = [l for l in out.stdout.splitlines() if l.startswith("IMPORTS ")]
  if not line:
    raise RuntimeError(f"import check failed: {out.stderr[-1500:]}")
  failed = json.loads(line[-1][len("IMPORTS "):])
  files = []
  for name, modules in imports.items():
    bad = [f"{m}: {failed[m]}" for m in modules if m in failed]
    if bad:
      left_out[name] = "; ".join(bad)[:500]
    else:
      files.append(name)
  return files, left_out


def junit_counts(path: str) -> dict[str, Any]:
  root = ElementTree.parse(path).getroot()
  counts = collections.Counter()
  failures = []
  for case in root.iter("testcase"):
    outcome = "passed"
    for child in case:
      if child.tag in ("failure", "error", "skipped"):
        outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
        if child.tag != "skipped":
          failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (child.get("message") or "")[:400]})
    counts[outcome] += 1
  return {"counts": dict(counts), "failures": failures[:50]}


def summary_counts(output: str) -> dict[str, int]:
  """Counts from pytest's last summary line (`3 passed, 1 failed in 2.0s`)."""
  lines = [l for l in output.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
  return ({word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])} if lines else {})


def run_tests(sizes: Sizes, args: argparse.Namespace, deadline: Deadline, record: dict) -> None:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  # The child shares the device with nothing else, but takes only what it needs.
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
  if importlib.util.find_spec("pytest") is None:
    record["skipped"] = "pytest is not installed here (and could not be installed)"
    log("tests: skipped,", record["skipped"])
    return
  names = tuple(args.test_files.split(",")) if args.test_files else (
      TINY_TEST_FILES if args.tiny else TEST_FILES)
  files, left_out = runnable_test_files(names, env)
  record.update(files=files, left_out=left_out)
  for name, why in left_out.items():
    log(f"tests: leaving out {name}: {why[:200]}")
  if not files:
    record["skipped"] = "no runnable test file"
    return
  junit = os.path.join(args.out, "tests_junit.xml")
  command = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
             "-o", "addopts=", "-q", "-rfE", f"--junitxml={junit}",
             *(["-k", args.tests_k] if args.tests_k else []),
             *[os.path.join("tests", f) for f in files]]
  record["command"] = " ".join(command)
  log("tests:", record["command"])
  start = time.monotonic()
  child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
  output: list[str] = []

  def forward():
    for line in child.stdout:
      output.append(line)
      sys.stdout.write("  | " + line)
  reader = threading.Thread(target=forward, daemon=True)
  reader.start()
  try:
    child.wait(timeout=max(deadline.left(), 5))
  except subprocess.TimeoutExpired:
    record["timed_out"] = True
    log("tests: out of time; interrupting pytest (it writes its results on Ctrl-C)")
    os.killpg(child.pid, signal.SIGINT)
    try:
      child.wait(timeout=30)
    except subprocess.TimeoutExpired:
      os.killpg(child.pid, signal.SIGKILL)
      child.wait()
  reader.join(timeout=10)
  record["seconds"] = round(time.monotonic() - start, 1)
  record["returncode"] = child.returncode
  record["summary"] = summary_counts("".join(output))
  if os.path.exists(junit):
    record.update(junit_counts(junit))
    if record.get("timed_out") and record["summary"]:  # the interrupted test is no pass
      record["counts"] = record["summary"]
  log(f"tests: {record.get('counts') or record['summary']} in {record['seconds']} s "
      f"(returncode {child.returncode})")


# ----------------------------------------------------------------------------------------------
# Timing helpers


def timed_rounds(runners: dict[str, Callable[[int], None]], sizes: Sizes, images: int,
                 deadline: Deadline) -> dict[str, list[float]]:
  """Images/s of each runner over `sizes.rounds` interleaved rounds (the order rotates each round)."""
  rates: dict[str, list[float]] = {name: [] for name in runners}
  names = list(runners)
  for r in range(sizes.rounds):
    if r > 0 and deadline.left() < 0:
      break
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      runners[name](sizes.calls)
      rates[name].append(images * sizes.calls / (time.perf_counter() - start))
  return rates


def rate_summary(rates: list[float]) -> dict[str, Any]:
  if not rates:
    return {}
  return {"best": round(max(rates), 2), "median": round(statistics.median(rates), 2),
          "rounds": [round(r, 2) for r in rates]}


def program_costs(compiled: Any) -> dict[str, Any]:
  """Bytes moved and FLOPs of one call of a compiled JAX program (XLA's cost analysis), and its memory."""
  costs: dict[str, Any] = {}
  try:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else {}
    costs["bytes_accessed"] = float(analysis.get("bytes accessed", float("nan")))
    costs["flops"] = float(analysis.get("flops", float("nan")))
  except Exception as exc:  # pylint: disable=broad-except
    costs["cost_analysis_error"] = error_text(exc)
  try:
    memory = compiled.memory_analysis()
    if memory is not None:
      costs["temp_mb"] = round(memory.temp_size_in_bytes / 2**20, 1)
      costs["argument_mb"] = round(memory.argument_size_in_bytes / 2**20, 1)
  except Exception:  # pylint: disable=broad-except
    pass
  return costs


# ----------------------------------------------------------------------------------------------
# Part 2: copy bandwidth, then JAX against PyTorch


def measure_bandwidth(sizes: Sizes) -> dict[str, Any]:
  """Bytes/s of the device's best large-array copy (read + write), in JAX and in PyTorch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  count = sizes.copy_mib * 2**20 // 4
  result: dict[str, Any] = {"array_mib": sizes.copy_mib}
  x = jnp.ones((count,), jnp.float32)
  copy = jax.jit(lambda a: a + 1).lower(x).compile()   # reads and writes every byte once
  copy(x).block_until_ready()
  times = []
  for _ in range(10):
    start = time.perf_counter()
    for _ in range(5):
      y = copy(x)
    y.block_until_ready()
    times.append((time.perf_counter() - start) / 5)
  result["jax_bytes_per_s"] = 2 * x.nbytes / min(times)
  del x, y
  try:
    import torch  # pylint: disable=g-import-not-at-top
    if torch.cuda.is_available():
      a = torch.ones(count, device="cuda")
      b = torch.empty_like(a)
      b.copy_(a)
      torch.cuda.synchronize()
      times = []
      for _ in range(10):
        start = time.perf_counter()
        for _ in range(5):
          b.copy_(a)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 5)
      result["torch_bytes_per_s"] = 2 * a.numel() * 4 / min(times)
      del a, b
      torch.cuda.empty_cache()
  except Exception as exc:  # pylint: disable=broad-except
    result["torch_error"] = error_text(exc)
  result["bytes_per_s"] = max(v for k, v in result.items() if k.endswith("bytes_per_s"))
  return result


def jax_model(name: str):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import mobilenet_jax as mj  # pylint: disable=g-import-not-at-top
  return mj.create_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)


def jax_train_step(model: Any):
  """(init_state, step): SGD momentum, softmax cross-entropy, BatchNorm in train mode, dropout on
  (the CPU benchmark's step, `mobilenet_jax.tools.jax_runners.sgd_train_step`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mobilenet_jax.tools.jax_runners import sgd_train_step  # pylint: disable=g-import-not-at-top
  tx, step = sgd_train_step(model, LEARNING_RATE, MOMENTUM)

  def init_state(variables):
    return variables["params"], variables["batch_stats"], tx.init(variables["params"])

  return init_state, jax.jit(step, donate_argnums=0)


# (name, mode) -> (run, compiled program): the profile reuses the benchmark's V2 training step.
_JAX_PROGRAMS: dict[tuple[str, str], tuple[Callable[[int], None], Any]] = {}


def jax_runner(name: str, mode: str, sizes: Sizes) -> tuple[Callable[[int], None], dict[str, Any]]:
  """A function running `n` steps back to back and waiting for the last, and the program's costs."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import mobilenet_jax as mj  # pylint: disable=g-import-not-at-top
  model = jax_model(name)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.standard_normal(
      (sizes.batch, sizes.resolution, sizes.resolution, 3)).astype(np.float32))
  variables = mj.init_variables(model, resolution=sizes.resolution, seed=0)
  start = time.perf_counter()
  if mode == "infer":
    predict, folded = mj.inference_function(model, variables)
    compiled = predict.lower(folded, images).compile()
    info = {"compile_s": round(time.perf_counter() - start, 2), **program_costs(compiled)}

    def run(n):
      for _ in range(n):
        out = compiled(folded, images)
      out.block_until_ready()
    _JAX_PROGRAMS[name, mode] = run, compiled
    return run, info
  init_state, step = jax_train_step(model)
  labels = jax.device_put(rng.integers(0, NUM_CLASSES, sizes.batch).astype(np.int32))
  key = jax.random.key(1)
  state = [init_state(variables)]
  compiled = step.lower(state[0], images, labels, key).compile()
  info = {"compile_s": round(time.perf_counter() - start, 2), **program_costs(compiled)}

  def run(n):
    for _ in range(n):
      state[0], loss = compiled(state[0], images, labels, key)
    loss.block_until_ready()
  _JAX_PROGRAMS[name, mode] = run, compiled
  return run, info


def torch_runner(name: str, mode: str, sizes: Sizes, compiled: bool
                 ) -> tuple[Callable[[int], None], dict[str, Any]]:
  import torch  # pylint: disable=g-import-not-at-top
  library, constructor = TORCH_MODELS[name]
  if library == "timm":
    import timm  # pylint: disable=g-import-not-at-top
    model = timm.create_model(constructor, num_classes=NUM_CLASSES)
  else:
    import torchvision  # pylint: disable=g-import-not-at-top
    model = getattr(torchvision.models, constructor)(num_classes=NUM_CLASSES)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cudnn.benchmark = True
  model = model.to(device=device, memory_format=torch.channels_last)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(sizes.batch, 3, sizes.resolution, sizes.resolution, generator=generator)
  images = images.to(device=device, memory_format=torch.channels_last)
  labels = torch.randint(0, NUM_CLASSES, (sizes.batch,), generator=generator).to(device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  forward = torch.compile(model) if compiled else model
  if mode == "infer":
    model.eval()

    def one_step():
      with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16):
        return forward(images)
  else:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def one_step():
      optimizer.zero_grad(set_to_none=True)
      with torch.autocast(device_type=device, dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(forward(images), labels)
      loss.backward()
      optimizer.step()
      return loss

  def run(n):
    for _ in range(n):
      one_step()
    sync()
  start = time.perf_counter()
  run(1)
  return run, {"first_call_s": round(time.perf_counter() - start, 2), "device": device,
               "library": f"{library}.{constructor}"}


def free_device_memory() -> None:
  gc.collect()
  try:
    import torch  # pylint: disable=g-import-not-at-top
    if torch.cuda.is_available():
      torch.cuda.empty_cache()
  except Exception:  # pylint: disable=broad-except
    pass


def bench_one(name: str, mode: str, sizes: Sizes, args: argparse.Namespace, bandwidth: Optional[float],
              deadline: Deadline) -> dict[str, Any]:
  record: dict[str, Any] = {"model": name, "mode": mode, "batch": sizes.batch,
                            "resolution": sizes.resolution, "dtype": "bfloat16 compute, float32 params"}
  runners, errors = {}, {}
  builders = {"jax": lambda: jax_runner(name, mode, sizes),
              "torch_eager": lambda: torch_runner(name, mode, sizes, compiled=False)}
  if not args.torch_compile:
    record["torch_compile"] = {"skipped": "--no-torch-compile"}
  elif (mode, name) not in GOALS and deadline.left() < sizes.torch_compile_reserve_s:
    record["torch_compile"] = {"skipped": "out of time (it compiles for a minute or more)"}
  else:
    builders["torch_compile"] = lambda: torch_runner(name, mode, sizes, compiled=True)
  for framework, build in builders.items():
    try:
      run, info = build()
      run(sizes.warmup)
      runners[framework] = run
      record[framework] = info
    except Exception as exc:  # pylint: disable=broad-except
      errors[framework] = error_text(exc)
      log(f"bench {mode} {name} {framework}: ERROR {errors[framework][:300]}")
  rates = timed_rounds(runners, sizes, sizes.batch, deadline)
  for framework, values in rates.items():
    record[framework].update(images_per_s=rate_summary(values))
  if errors:
    record["errors"] = errors
  jax_rates = rates.get("jax")
  torch_rates = {f: rates[f] for f in ("torch_eager", "torch_compile") if rates.get(f)}
  if jax_rates and torch_rates:
    best_torch_median = max(statistics.median(v) for v in torch_rates.values())
    best_torch_best = max(max(v) for v in torch_rates.values())
    record["jax_over_torch"] = {
        "median": round(statistics.median(jax_rates) / best_torch_median, 3),
        "best": round(max(jax_rates) / best_torch_best, 3),
        "torch_reference": max(torch_rates, key=lambda f: statistics.median(torch_rates[f]))}
  jax_info = record.get("jax", {})
  if jax_rates and bandwidth and jax_info.get("bytes_accessed"):
    steps_per_s = max(jax_rates) / sizes.batch
    achieved = jax_info["bytes_accessed"] * steps_per_s
    jax_info["achieved_bytes_per_s"] = achieved
    jax_info["memory_roofline_fraction"] = round(achieved / bandwidth, 3)
  parts = [f"{f} {rate_summary(v).get('median', 'n/a')} img/s" for f, v in rates.items()]
  ratio = record.get("jax_over_torch", {}).get("median")
  roofline = jax_info.get("memory_roofline_fraction")
  log(f"bench {mode} {name}: " + ", ".join(parts)
      + (f"; JAX/PyTorch {ratio}x" if ratio else "")
      + (f"; roofline {roofline:.0%}" if roofline is not None else ""))
  return record


def run_bench(sizes: Sizes, args: argparse.Namespace, deadline: Deadline, record: dict,
              report: Report) -> None:
  import mobilenet_jax as mj  # pylint: disable=g-import-not-at-top
  try:
    record["bandwidth"] = measure_bandwidth(sizes)
    log(f"bandwidth: {record['bandwidth']['bytes_per_s'] / 1e9:.0f} GB/s (copy, read + write)")
  except Exception as exc:  # pylint: disable=broad-except
    record["bandwidth"] = {"error": error_text(exc)}
    log("bandwidth: ERROR", record["bandwidth"]["error"])
  report.save()
  bandwidth = record["bandwidth"].get("bytes_per_s")
  available = set(mj.list_models())
  wanted = set(args.models.split(",")) if args.models else None
  record["results"], record["not_measured"] = [], []
  for mode, name in BENCH_ORDER:
    if name not in available or (wanted and name not in wanted) or mode not in args.modes.split(","):
      continue
    if deadline.left() < (2 if args.tiny else 25):
      record["not_measured"].append(f"{mode} {name}: out of time")
      continue
    try:
      record["results"].append(bench_one(name, mode, sizes, args, bandwidth, deadline))
    except Exception as exc:  # pylint: disable=broad-except
      record["results"].append({"model": name, "mode": mode, "error": error_text(exc)})
      log(f"bench {mode} {name}: ERROR {error_text(exc)[:300]}")
    free_device_memory()
    report.save()


# ----------------------------------------------------------------------------------------------
# Part 3: V2's depthwise layers


def depthwise_layers(sizes: Sizes) -> list[dict[str, int]]:
  """V2's depthwise convolutions at the run's size: input height/width, channels, kernel, stride."""
  import mobilenet_jax as mj  # pylint: disable=g-import-not-at-top
  model = mj.create_model("mobilenet_v2", num_classes=NUM_CLASSES)
  return [{"size": c.out_size[0] * c.stride, "channels": c.in_features, "kernel": c.kernel_size,
           "stride": c.stride} for c in mj.layer_costs(model, resolution=sizes.resolution)
          if c.kind == "depthwise"]


def grouped_conv(x, kernel, stride, padding):
  """XLA's depthwise convolution: a grouped convolution with one group per channel."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=x.shape[-1])


def shifted_multiply_adds(x, kernel, stride, padding):
  """The same as k*k strided windows of the padded input, each times a per-channel weight."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  k = kernel.shape[0]
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  out_h = (padded.shape[1] - k) // stride + 1
  out_w = (padded.shape[2] - k) // stride + 1
  total = None
  for i in range(k):
    for j in range(k):
      window = padded[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]
      term = window * kernel[i, j, 0]
      total = term if total is None else total + term
  return total


def project_depthwise() -> tuple[Optional[Callable], str]:
  """The project's own shifted formulation (its CPU kernels), wherever its module now lives."""
  package = os.path.join(ROOT, "mobilenet_jax")
  for path in sorted(glob.glob(os.path.join(package, "**", "depthwise.py"), recursive=True)):
    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    try:
      function = getattr(importlib.import_module(module), "depthwise_shifted", None)
    except Exception:  # pylint: disable=broad-except
      continue
    if function is not None:
      return function, f"{module}.depthwise_shifted"
  return None, "no depthwise_shifted found in mobilenet_jax"


def run_depthwise(sizes: Sizes, args: argparse.Namespace, deadline: Deadline, record: dict,
                  report: Report) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  layers = depthwise_layers(sizes)[:args.depthwise_layers or None]
  record["layers"] = layers
  formulations = {"xla_grouped": grouped_conv, "shifted_autodiff": shifted_multiply_adds}
  project, where = project_depthwise()
  record["project_formulation"] = where
  if project is not None:
    formulations["project_shifted"] = lambda x, w, s, p: project(x, w, s, tuple(map(tuple, p)))
  pads = [jax.lax.padtype_to_pads((l["size"], l["size"]), (l["kernel"], l["kernel"]),
                                  (l["stride"], l["stride"]), "SAME") for l in layers]
  bandwidth = report.data.get("bench", {}).get("bandwidth", {}).get("bytes_per_s")
  rng = np.random.default_rng(0)
  record["results"] = []
  for dtype in args.depthwise_dtypes.split(","):
    xs = [jnp.asarray(rng.standard_normal((sizes.batch, l["size"], l["size"], l["channels"])),
                      dtype) for l in layers]
    ws = [jnp.asarray(rng.standard_normal((l["kernel"], l["kernel"], 1, l["channels"])), dtype)
          for l in layers]
    reference = None
    for formulation, conv in formulations.items():
      if deadline.left() < 0:
        record.setdefault("not_measured", []).append(f"{formulation} {dtype}: out of time")
        continue

      def forward(xs, ws, conv=conv):
        return [conv(x, w, l["stride"], p) for x, w, l, p in zip(xs, ws, layers, pads)]

      def backward(xs, ws, gs, forward=forward):
        return jax.vjp(forward, xs, ws)[1](gs)
      entry: dict[str, Any] = {"formulation": formulation, "dtype": dtype}
      try:
        fwd = jax.jit(forward).lower(xs, ws).compile()
        outs = fwd(xs, ws)
        gs = [jnp.ones_like(o) for o in outs]
        bwd = jax.jit(backward).lower(xs, ws, gs).compile()
        if reference is None:
          reference = [np.asarray(o, np.float32) for o in outs]
        else:
          entry["max_abs_diff_vs_xla_grouped"] = float(max(
              np.max(np.abs(np.asarray(o, np.float32) - r)) for o, r in zip(outs, reference)))
        for direction, program, operands in (("forward", fwd, (xs, ws)),
                                             ("backward", bwd, (xs, ws, gs))):
          jax.block_until_ready(program(*operands))
          times = []
          for _ in range(max(sizes.rounds, 3)):
            start = time.perf_counter()
            for _ in range(sizes.calls):
              out = program(*operands)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - start) / sizes.calls)
          costs = program_costs(program)
          result = {"ms": round(min(times) * 1e3, 3), "median_ms": round(statistics.median(times) * 1e3, 3),
                    "bytes_accessed": costs.get("bytes_accessed")}
          if bandwidth and costs.get("bytes_accessed"):
            result["memory_roofline_fraction"] = round(
                costs["bytes_accessed"] / min(times) / bandwidth, 3)
          entry[direction] = result
        del outs, gs
      except Exception as exc:  # pylint: disable=broad-except
        entry["error"] = error_text(exc)
      record["results"].append(entry)
      log(f"depthwise {dtype} {formulation}: forward {entry.get('forward', {}).get('ms')} ms, "
          f"backward {entry.get('backward', {}).get('ms')} ms"
          + (f" ERROR {entry['error'][:200]}" if "error" in entry else ""))
      report.save()
    del xs, ws
    free_device_memory()


# ----------------------------------------------------------------------------------------------
# Part 4: a profile of V2's training step


def hlo_instructions(hlo_text: str) -> dict[str, str]:
  """name -> a short description (op, custom-call target, group count, shape) of each instruction."""
  described = {}
  pattern = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?)\s+"
                       r"([\w\-]+)\(")
  for line in hlo_text.splitlines():
    match = pattern.match(line)
    if not match:
      continue
    name, shape, op = match.groups()
    extra = []
    target = re.search(r'custom_call_target="([^"]+)"', line)
    if target:
      extra.append(target.group(1))
    groups = re.search(r"feature_group_count=(\d+)", line)
    if groups:
      extra.append(f"groups={groups.group(1)}")
    kind = re.search(r"kind=(k\w+)", line)
    if kind:
      extra.append(kind.group(1))
    described[name] = " ".join([op, *extra, shape[:80]])
  return described


def category(description: str) -> str:
  """What kind of work an instruction is: grouped (depthwise) or other convolution, fusion kind, op."""
  words = description.split()
  groups = re.search(r"groups=(\d+)", description)
  if groups and int(groups.group(1)) > 1:
    return f"grouped convolution {words[1] if words[0] == 'custom-call' else words[0]}"
  if words[0] == "custom-call" or words[0] == "fusion":
    return " ".join(words[:2])
  return words[0]


def hlo_op_counts(hlo_text: str) -> dict[str, int]:
  counts = collections.Counter()
  for description in hlo_instructions(hlo_text).values():
    counts[category(description)] += 1
  return dict(counts.most_common(25))


def summarise_trace(log_dir: str, described: dict[str, str], top: int = 25) -> dict[str, Any]:
  """Top events by total time on the device planes (the host's when there is no device plane)."""
  import jax  # pylint: disable=g-import-not-at-top
  paths = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    return {"error": f"no .xplane.pb under {log_dir}"}
  data = jax.profiler.ProfileData.from_file(max(paths, key=os.path.getmtime))
  planes = list(data.planes)
  device = [p for p in planes if "/device:" in p.name and "CUSTOM" not in p.name]
  chosen = device or [p for p in planes if p.name.startswith("/host:CPU")]
  summary: dict[str, Any] = {"planes": [p.name for p in planes],
                             "summarised_planes": [p.name for p in chosen], "lines": {}}
  for plane in chosen:
    for line in plane.lines:
      totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
      for event in line.events:
        totals[event.name][0] += event.duration_ns
        totals[event.name][1] += 1
      if not totals:
        continue
      all_ns = sum(t for t, _ in totals.values())
      rows = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
      by_category: dict[str, float] = collections.Counter()
      for name, (ns, _) in totals.items():
        by_category[category(described[name]) if name in described else "(not in the program)"] += ns
      key = f"{plane.name} | {line.name}"
      summary["lines"][key] = {
          "total_ms": round(all_ns / 1e6, 3),
          "categories_ms": {c: round(ns / 1e6, 3) for c, ns in by_category.most_common(12)},
          "top": [{"name": name[:160], "ms": round(ns / 1e6, 3), "count": count,
                   "share": round(ns / all_ns, 3) if all_ns else None,
                   **({"hlo": described[name]} if name in described else {})}
                  for name, (ns, count) in rows]}
  return summary


def run_profile(sizes: Sizes, args: argparse.Namespace, deadline: Deadline, record: dict) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  del deadline
  if (args.profile_model, "train") not in _JAX_PROGRAMS:
    jax_runner(args.profile_model, "train", sizes)
  run, compiled = _JAX_PROGRAMS[args.profile_model, "train"]
  record["model"] = args.profile_model
  hlo = compiled.as_text()
  described = hlo_instructions(hlo)
  record["hlo_op_counts"] = hlo_op_counts(hlo)
  record["grouped_convolutions"] = sum(category(d).startswith("grouped") for d in described.values())
  run(2)
  log_dir = os.path.join(args.out, "profile")
  with jax.profiler.trace(log_dir):
    run(sizes.profile_steps)
  record["trace_dir"] = log_dir
  try:
    record["trace"] = summarise_trace(log_dir, described)
  except Exception as exc:  # pylint: disable=broad-except
    record["trace"] = {"error": error_text(exc)}
  lines = record["trace"].get("lines", {})
  for key_name, line in list(lines.items())[:4]:
    log(f"profile {key_name}: {line['total_ms']} ms over {sizes.profile_steps} steps; top: "
        + "; ".join(f"{r['name'][:50]} {r['ms']} ms" for r in line["top"][:5]))
  if "error" in record["trace"]:
    log("profile: trace not summarised:", record["trace"]["error"])


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("out", help="folder for gpu_check.log, gpu_check.json (and the profile)")
  parser.add_argument("--tiny", action="store_true",
                      help="rehearsal: batch 2, 32 px, 2 rounds (runs on a CPU in a few minutes)")
  parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {STEPS}")
  parser.add_argument("--models", default="", help="bench only these (e.g. mobilenet_v2)")
  parser.add_argument("--modes", default="train,infer", help="bench these: train, infer")
  parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                      help="time PyTorch eager only")
  parser.add_argument("--depthwise-layers", type=int, default=0,
                      help="time only the first N of V2's depthwise layers (0: all)")
  parser.add_argument("--depthwise-dtypes", default="bfloat16,float32")
  parser.add_argument("--profile-model", default="mobilenet_v2")
  parser.add_argument("--test-files", default="", help="comma-separated names under tests/")
  parser.add_argument("--tests-k", default="", help="pytest -k expression for the tests part")
  parser.add_argument("--budget-scale", type=float, default=1.0,
                      help="multiply every part's time budget")
  args = parser.parse_args(argv)
  steps = [s for s in args.steps.split(",") if s]
  unknown = sorted(set(steps) - set(STEPS))
  if unknown:
    parser.error(f"unknown steps {unknown}; choose from {STEPS}")
  sizes = TINY if args.tiny else GPU
  os.makedirs(args.out, exist_ok=True)
  log_file = open(os.path.join(args.out, "gpu_check.log"), "a")  # pylint: disable=consider-using-with
  sys.stdout, sys.stderr = Tee(sys.__stdout__, log_file), Tee(sys.__stderr__, log_file)
  # JAX takes half the device's memory up front (not its default 75%): PyTorch runs beside it.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  if args.tiny:   # compile as the tests do (tests/fast_compile.py): the rehearsal checks code paths
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false") if f)
  report = Report(os.path.join(args.out, "gpu_check.json"), {
      "tiny": args.tiny, "sizes": dataclasses.asdict(sizes), "steps": steps,
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
  start = time.monotonic()
  if "tests" in steps:   # first, before this process takes any device memory
    record = report.data["tests"] = {}
    deadline = Deadline(sizes.budgets["tests"] * args.budget_scale)
    try:
      run_tests(sizes, args, deadline, record)
    except Exception as exc:  # pylint: disable=broad-except
      record["error"] = error_text(exc)
      log("tests: ERROR", record["error"])
    report.save()
  report.data["environment"] = environment()
  env = report.data["environment"]
  log(f"environment: jax {env.get('jax')} on {env.get('jax_devices')}, torch {env.get('torch')} "
      f"({env.get('torch_device', 'no CUDA')})")
  report.save()
  for step in steps:
    if step == "tests":
      continue
    record = report.data[step] = {}
    deadline = Deadline(sizes.budgets[step] * args.budget_scale)
    part_start = time.monotonic()
    try:
      if step == "bench":
        run_bench(sizes, args, deadline, record, report)
      elif step == "depthwise":
        run_depthwise(sizes, args, deadline, record, report)
      else:
        run_profile(sizes, args, deadline, record)
    except Exception as exc:  # pylint: disable=broad-except
      record["error"] = error_text(exc)
      log(f"{step}: ERROR {record['error'][:500]}")
    record["seconds"] = round(time.monotonic() - part_start, 1)
    free_device_memory()
    report.save()
  report.data["seconds"] = round(time.monotonic() - start, 1)
  report.save()
  log(f"done in {report.data['seconds']} s: {report.path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
