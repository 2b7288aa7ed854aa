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
network, as a newcomer writes it (`create_model`'s default compute; its training step is `jax`'s).
torch runs torchvision's models (timm's for V1) under `torch.inference_mode`, Keras runs
`keras.applications` on the JAX backend. Only jax, flax and optax are needed;
torch/torchvision/timm and keras are used where installed.

The parts: `timing.py` (timed calls, the matmul peak), `workload.py` (the networks in each
library), `jax_runners.py`, `peer_runners.py` (torch, Keras), `deploy_runners.py` (ONNX Runtime,
LiteRT), `bench_report.py` (the table); this file chooses, measures in rounds, and writes JSON.

On Linux/glibc the command restarts itself with GLIBC_TUNABLES that keep freed memory in the process
(`--malloc retain`, `host_memory.py`): otherwise each XLA:CPU training step page-faults its whole
multi-GB buffer in again (docs/performance.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax

from mobilenet_jax.compilation_cache import enable_compilation_cache
from mobilenet_jax.compute import COMPUTE, resolve_compute
from mobilenet_jax.models.registry import create_model
from mobilenet_jax.profile import count_madds
from mobilenet_jax.tools import host_memory
from mobilenet_jax.tools.bench_report import machine_info, print_table
from mobilenet_jax.tools.deploy_runners import DEPLOY_RUNNERS, EXPORT_FRAMEWORKS, print_export_ratios
from mobilenet_jax.tools.jax_runners import jax_apply_runner, jax_runner
from mobilenet_jax.tools.peer_runners import keras_runner, torch_runner
from mobilenet_jax.tools.timing import (Result, Runner, load_average, measure_matmul_peak,
                                        measure_torch_matmul_peak, time_calls)
from mobilenet_jax.xla_cpu.inference import CPU_MICRO_BATCH, CPU_SIDE_BY_SIDE

MODELS = {"v1": "mobilenet_v1", "v2": "mobilenet_v2", "v3_large": "mobilenet_v3_large",
          "v3_small": "mobilenet_v3_small"}
FRAMEWORKS = ("jax", "jax_apply", "torch", "keras")   # the default set; see EXPORT_FRAMEWORKS
MALLOC_MODES = ("retain", "default")
MODES = ("infer", "latency", "train")
DTYPES = ("float32", "bfloat16")
RUNNERS: dict[str, Callable[..., Runner]] = {
    "jax": jax_runner, "jax_apply": jax_apply_runner, "torch": torch_runner, "keras": keras_runner,
    **DEPLOY_RUNNERS}


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
  parser.add_argument("--compute", choices=COMPUTE, default="auto",
                      help="how JAX computes the layers (mobilenet_jax/compute.py): auto = the "
                      "XLA:CPU kernels and inference engine on CPU")
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
  print(f"JAX compute={args.compute} ({resolve_compute(args.compute)}); "
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