"""What `layers._materialized` buys: training steps with and without it, interleaved in one process.

    python experiments/ab_materialized_gradient.py                        # V1, V2, V3-L, V3-S; ~8 min
    python experiments/ab_materialized_gradient.py --models v2 --rounds 8

The depthwise backward (models/layers.py) reads its output gradient g once per kernel tap; on CPU it
first materialises g behind a conditional, because XLA:CPU otherwise recomputes g's producers (the
BatchNorm, activation and SE gradients) inside every tap. For each model this builds the benchmark's
training step (`benchmark.jax_runner`: batch 32, 224, f32, SGD momentum) twice, once with
`_materialized` replaced by the identity while tracing, and times them in alternation (medians and
minimums of `--rounds` calls each). First it checks that both give the same gradients on the
default job's network (V2 x0.5, 32x32). Restarts itself with host_memory.RETAIN_TUNABLES, as the
benchmark does. Used for the figures in `_materialized`'s docstring and the README's Speed section.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet_jax import benchmark, host_memory
from mobilenet_jax.models import layers
from mobilenet_jax.models.registry import create_model


@contextlib.contextmanager
def without_materialized():
  original = layers._materialized  # pylint: disable=protected-access
  layers._materialized = lambda g, kernel: g  # pylint: disable=protected-access
  try:
    yield
  finally:
    layers._materialized = original  # pylint: disable=protected-access


def gradient_difference() -> float:
  """Largest relative difference of any parameter gradient, with against without."""
  model = create_model("mobilenet_v2", width_multiplier=0.5, num_classes=10)
  images = jnp.asarray(np.random.default_rng(0).standard_normal((16, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), images, train=False)

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                            train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

  with_it = jax.jit(jax.grad(loss))(variables["params"])
  with without_materialized():
    without = jax.jit(jax.grad(loss))(variables["params"])
  return max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)), with_it, without)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="v1,v2,v3_large,v3_small")
  parser.add_argument("--rounds", type=int, default=6, help="timed calls of each variant")
  args = parser.parse_args()
  options = benchmark.parse_args(["--malloc", "default"])
  print(f"gradients with vs without, largest relative difference: {gradient_difference():.1e}")
  for key in args.models.split(","):
    name = benchmark.MODELS[key]
    with without_materialized():
      without = benchmark.jax_runner(name, "train", 32, 224, "float32", options)
    with_it = benchmark.jax_runner(name, "train", 32, 224, "float32", options)
    variants = {"without": without.step, "with": with_it.step}
    times = {variant: [] for variant in variants}
    for step in variants.values():
      step()
      step()
    for _ in range(args.rounds):
      for variant, step in variants.items():
        time.sleep(0.05)
        start = time.perf_counter()
        step()
        times[variant].append((time.perf_counter() - start) * 1e3)
    row = "  ".join(f"{v} median {np.median(t):7.1f} ms (min {min(t):7.1f})" for v, t in times.items())
    print(f"{name:20s} {row}", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_retained_memory(sys.argv)
  main()
