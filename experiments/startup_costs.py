"""What the test suite's and the training job's start-up choices save, each measured in fresh processes.

    python experiments/startup_costs.py            # all three, ~2 min on a 2-core CPU

- fusion_emitters: compile time of an unoptimised (JAX_DISABLE_MOST_OPTIMIZATIONS) training gradient
  of MobileNetV2 x0.35, batch 32, 32x32, with XLA:CPU's MLIR fusion emitters (XLA's default) and with
  its loop emitters (`--xla_cpu_use_fusion_emitters=false`, what tests/fast_compile.py sets).
- eager_init: `model.init` of MobileNetV3-Small x0.5 at 32x32, eager (every op compiled on its own)
  against jitted (one compilation), both with JAX_DISABLE_MOST_OPTIMIZATIONS as in the tests.
- autograph: time to the first train and eval batches of the digits job (32x32, batch 32) with the
  tf.data functions converted by AutoGraph and without (`preprocess.graph_function`, the default).

Each variant runs in its own Python process (XLA_FLAGS are read once per process; compilation caches
would favour the second variant otherwise), `--repeats` times, alternating; the medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "fusion_emitters": {"MLIR fusion emitters": "",
                        "loop emitters": "--xla_cpu_use_fusion_emitters=false"},
    "eager_init": {"eager": "eager", "jitted": "jit"},
    "autograph": {"AutoGraph": "autograph", "graph_function": "plain"},
}


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

  import jax
  import jax.numpy as jnp

  from mobilenet_jax import create_model
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
  parser.add_argument("--studies", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
  parser.add_argument("--repeats", type=int, default=2, help="processes per variant")
  parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(f"SECONDS {_measure(*args.child)}")
    return
  for study in args.studies.split(","):
    if study not in VARIANTS:
      parser.error(f"unknown study {study!r}; choose from {list(VARIANTS)}")
    seconds = {label: [] for label in VARIANTS[study]}
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


if __name__ == "__main__":
  main()
