"""Start-up costs, each measured in fresh processes: a newcomer's first logits, the main job's first
step, and what the test suite's and the training job's start-up choices save.

    python experiments/startup_costs.py                           # every study
    python experiments/startup_costs.py --studies first_logits,main_job
    python experiments/startup_costs.py --json experiments/results/startup_costs.json   # also a file

- first_logits: seconds from `import mobilenet_jax` to the first logits of one 224x224 image, the
  README's way (`create_model`, `mj.init_variables`, `jax.jit(model.apply)`, with the compilation
  cache on), for V2 and V3-Large: cold (an empty compilation cache) and warm (a second process).
- readme_snippet: the README's first Python snippet (the model zoo's), run whole in a fresh process
  with the project's default compilation cache pointed at an empty folder (cold) and again (warm).
- main_job: the main job's first step (`first step done ...s after its compilation began` in its log),
  and what of it its train step took to compile or load from the cache, on a first start (empty
  compilation cache) and on a second start (another workdir, same cache).
- init: `model.init` of V3-Large at 224 under `jax.jit`, and `mj.init_variables` (the same program
  evaluated vectorised: `models/initialization.py`), in seconds; both give the same values. Also
  `jax.eval_shape` of the init (its tracing alone): with `jax.jit(model.init)`, a yardstick of
  how fast the machine runs against the figures the start-up goals were set with.
- fusion_emitters: compile time of an unoptimised (JAX_DISABLE_MOST_OPTIMIZATIONS) training gradient
  of MobileNetV2 x0.35, batch 32, 32x32, with XLA:CPU's MLIR fusion emitters (XLA's default) and with
  its loop emitters (`--xla_cpu_use_fusion_emitters=false`, what tests/fast_compile.py sets).
- eager_init: `model.init` of MobileNetV3-Small x0.5 at 32x32, eager (every op compiled on its own)
  against jitted (one compilation), both with JAX_DISABLE_MOST_OPTIMIZATIONS as in the tests.
- autograph: time to the first train and eval batches of the digits job (32x32, batch 32) with the
  tf.data functions converted by AutoGraph and without (`preprocess.graph_function`, the default).

Each variant runs in its own Python process (XLA_FLAGS are read once per process; compilation caches
would favour the second variant otherwise), `--repeats` times, alternating; the medians are printed.
`--json PATH` also writes every run's seconds, their medians, the command and the machine (CPU count,
load average, library versions) to PATH (docs/startup.md: how to read them).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = {
    "fusion_emitters": {"MLIR fusion emitters": "",
                        "loop emitters": "--xla_cpu_use_fusion_emitters=false"},
    "eager_init": {"eager": "eager", "jitted": "jit"},
    "autograph": {"AutoGraph": "autograph", "graph_function": "plain"},
    "init": {"jax.jit(model.init)": "jit", "mj.init_variables": "init_variables",
             "jax.eval_shape(model.init)": "eval_shape"},
}
# Studies that run a sequence of processes sharing one compilation cache (cold, then warm).
CACHE_STUDIES = ("first_logits", "readme_snippet", "main_job")
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
FIRST_LOGITS_MODELS = ("mobilenet_v2", "mobilenet_v3_large")


def _first_logits(name: str) -> float:
  """The README's snippet up to the first logits, from before `import mobilenet_jax`."""
  start = time.perf_counter()
  import jax
  import jax.numpy as jnp
  import mobilenet_jax as mj
  mj.enable_compilation_cache(os.environ["STARTUP_CACHE"])
  model = mj.create_model(name)
  variables = mj.init_variables(model, resolution=224, seed=0)
  jax.block_until_ready(jax.jit(model.apply)(variables, jnp.zeros((1, 224, 224, 3))))
  return time.perf_counter() - start


def readme_snippet() -> str:
  """The README's first ```python block, with the compilation cache switched on in the given folder
  (as `mj.enable_compilation_cache()` would do in the user's cache folder)."""
  with open(README) as f:
    text = f.read()
  code = text.split("```python\n", 1)[1].split("```", 1)[0]
  return ("import os, mobilenet_jax\n"
          "mobilenet_jax.enable_compilation_cache(os.environ['STARTUP_CACHE'])\n" + code)


def _readme_snippet_seconds(cache: str) -> float:
  """Wall seconds of a fresh Python process running the README's snippet, start-up included."""
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", readme_snippet()], check=True, capture_output=True,
                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", STARTUP_CACHE=cache))
  return time.perf_counter() - start


def _main_job_first_step(cache: str) -> tuple[float, float]:
  """Runs the main job (the default config, 2 steps) in a child process: its first step's seconds
  and the seconds its train step took to compile (or load from the compilation cache)."""
  with tempfile.TemporaryDirectory() as workdir:
    out = subprocess.run(
        [sys.executable, "-m", "mobilenet_jax.main", f"--workdir={workdir}",
         "--config.num_train_steps=2", "--config.eval_every_steps=0", "--config.progress_bar=off",
         f"--config.compilation_cache={cache}"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, check=True)
  match = re.search(r"first step done ([0-9.]+)s after its compilation began.* compilation "
                    r"cache\) in ([0-9.]+)s", out.stdout + out.stderr)
  if not match:
    raise RuntimeError("the main job printed no first-step time:\n" + out.stdout + out.stderr)
  return float(match.group(1)), float(match.group(2))


def cache_study(study: str, repeats: int) -> dict[str, dict[str, list[float]]]:
  """Cold (empty cache) and warm (second process, same cache) seconds of `repeats` pairs per case;
  prints the medians."""
  cases = {"first_logits": FIRST_LOGITS_MODELS, "readme_snippet": ("model zoo snippet",)
           }.get(study, ("default job",))
  results = {}
  for case in cases:
    seconds = results[case] = {"cold": [], "warm": []}
    for _ in range(repeats):
      with tempfile.TemporaryDirectory() as cache:
        for label in ("cold", "warm"):
          if study == "main_job":
            first_step, compile_s = _main_job_first_step(cache)
            seconds[label].append(first_step)
            seconds.setdefault(f"{label} (train step compile)", []).append(compile_s)
            continue
          if study == "readme_snippet":
            seconds[label].append(_readme_snippet_seconds(cache))
            continue
          out = subprocess.run([sys.executable, __file__, "--child", study, case],
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", STARTUP_CACHE=cache),
                               capture_output=True, text=True, check=True).stdout
          seconds[label].append(float(out.split("SECONDS ")[1].split()[0]))
    print(f"{study:16s}{case:20s}" + "  ".join(f"{label}: {statistics.median(s):5.2f} s"
                                               for label, s in seconds.items()), flush=True)
  return results


def write_json(path: str, argv: list[str], results: dict) -> None:
  """The runs' seconds and medians, with the command and the machine that gave them."""
  versions = {}
  for name in ("jax", "jaxlib", "flax", "tensorflow-cpu"):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  record = {
      "command": " ".join(["python experiments/startup_costs.py", *argv]),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": {"cpus": os.cpu_count(), "architecture": platform.machine(),
                  "load_average_1_5_15min": list(os.getloadavg()), "python": platform.python_version(),
                  **versions},
      "results": {study: {case: {label: {"median_s": round(statistics.median(runs), 3),
                                         "runs_s": [round(r, 3) for r in runs]}
                                 for label, runs in labels.items()}
                          for case, labels in cases.items()}
                  for study, cases in results.items()},
  }
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
    f.write("\n")


def _measure(study: str, variant: str) -> float:
  """Runs in the child process: seconds of the measured step."""
  if study == "autograph":
    from mobilenet_jax.data import preprocess
    if variant == "autograph":
      preprocess.graph_function = lambda function: function
    from mobilenet_jax import data, train
    config = train.base_config()
    config.dataset.name, config.resolution, config.batch_size = "digits", 32, 32
    start = time.perf_counter()
    next(data.create_train_iterator(config, local_batch_size=32, seed=0))
    next(iter(data.create_eval_iterator(config, local_batch_size=64)))
    return time.perf_counter() - start

  if study == "first_logits":
    return _first_logits(variant)

  import jax
  import jax.numpy as jnp

  from mobilenet_jax import create_model, init_variables
  if study == "init":
    model = create_model("mobilenet_v3_large")
    start = time.perf_counter()
    images = jnp.zeros((1, 224, 224, 3), jnp.float32)
    if variant == "jit":
      jax.block_until_ready(jax.jit(lambda: model.init(jax.random.key(0), images, train=False))())
    elif variant == "eval_shape":   # tracing alone: a yardstick of the Python side's speed
      jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    else:
      jax.block_until_ready(init_variables(model, 224, seed=0))
    return time.perf_counter() - start

  jax.config.update("jax_disable_most_optimizations", True)
  if study == "eager_init":
    model = create_model("mobilenet_v3_small", width_multiplier=0.5, num_classes=10)
    images = jnp.zeros((4, 32, 32, 3), jnp.float32)
    init = lambda: model.init(jax.random.key(0), images, train=False)
    start = time.perf_counter()
    jax.block_until_ready(jax.jit(init)() if variant == "jit" else init())
    return time.perf_counter() - start

  model = create_model("mobilenet_v2", width_multiplier=0.35, num_classes=10)
  images = jnp.zeros((32, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))

  def loss(params, batch_stats):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(1)})
    return logits.sum(), updates

  lowered = jax.jit(jax.grad(loss, has_aux=True)).trace(
      variables["params"], variables["batch_stats"]).lower()
  start = time.perf_counter()
  lowered.compile()
  return time.perf_counter() - start


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  studies = [*CACHE_STUDIES, *VARIANTS]
  parser.add_argument("--studies", default=",".join(studies), help=f"comma list of {studies}")
  parser.add_argument("--repeats", type=int, default=2, help="processes per variant")
  parser.add_argument("--json", help="also write the runs and the machine to this JSON file")
  parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(f"SECONDS {_measure(*args.child)}")
    return
  results = {}
  for study in args.studies.split(","):
    if study in CACHE_STUDIES:
      results[study] = cache_study(study, args.repeats)
      continue
    if study not in VARIANTS:
      parser.error(f"unknown study {study!r}; choose from {studies}")
    seconds = {label: [] for label in VARIANTS[study]}
    results[study] = {"variants": seconds}
    for _ in range(args.repeats):
      for label, value in VARIANTS[study].items():
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        child = value
        if study == "fusion_emitters":
          env["XLA_FLAGS"], child = value, "compile"
        out = subprocess.run([sys.executable, __file__, "--child", study, child], env=env,
                             capture_output=True, text=True, check=True).stdout
        seconds[label].append(float(out.split("SECONDS ")[1].split()[0]))
    print(f"{study:16s}" + "  ".join(f"{label}: {statistics.median(s):5.2f} s"
                                     for label, s in seconds.items()), flush=True)
  if args.json:
    write_json(args.json, sys.argv[1:] if argv is None else list(argv), results)


if __name__ == "__main__":
  main()
