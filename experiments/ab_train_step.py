"""What one CPU-specific choice buys: the training step with and without it, interleaved in one process.

    python experiments/ab_train_step.py --change fused_batch_norm                # V1, V2, V3-L, V3-S
    python experiments/ab_train_step.py --change materialized_gradient --models v2 --rounds 8

Changes (options of `mobilenet_jax.xla_cpu.make_conv_norm_act`, the model's `conv_norm_act`; nothing
else differs):
  materialized_gradient  the depthwise backward materialises its output gradient before the k*k
                         gradient passes (`xla_cpu/depthwise.py`)
  fused_batch_norm       BatchNorm + activation with the hand-written fused gradient
                         (`xla_cpu/norm_activation.py`) instead of Flax's BatchNorm differentiated by JAX

For each model this builds the benchmark's training step (`benchmark.jax_runner`: batch 32, 224, f32,
SGD momentum) twice, without and with the change, and times them in alternation (medians and minimums of
`--rounds` calls each). First it checks that both give the same gradients on the default job's network
(V2 x0.5, 32x32), as the largest difference relative to each gradient's largest entry. Restarts itself
with host_memory.RETAIN_TUNABLES, as the benchmark does.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet_jax import xla_cpu
from mobilenet_jax.models.registry import create_model
from mobilenet_jax.tools import benchmark, host_memory, jax_runners

CHANGES = ("materialized_gradient", "fused_batch_norm")


def kernels(change: str, on: bool):
  """The CPU kernels with `change` on or off."""
  return xla_cpu.make_conv_norm_act(**{change: on})


def gradient_difference(change: str) -> float:
  """Largest difference of any parameter gradient, with against without, relative to its largest entry."""
  model = create_model("mobilenet_v2", width_multiplier=0.5, num_classes=10,
                       conv_norm_act=kernels(change, True))
  images = jnp.asarray(np.random.default_rng(0).standard_normal((16, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), images, train=False)

  def loss(params, model):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                            train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

  with_it = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], model)
  without_it = jax.jit(jax.grad(loss), static_argnums=1)(
      variables["params"], model.clone(conv_norm_act=kernels(change, False)))
  # Gradients that are 0 up to rounding (the bias of a BatchNorm followed by another BatchNorm,
  # V2's projections) are left out: below 1e-4 of the largest gradient entry of the network.
  pairs = [(a, b) for a, b in zip(jax.tree.leaves(with_it), jax.tree.leaves(without_it))]
  largest = max(float(jnp.max(jnp.abs(b))) for _, b in pairs)
  return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
             for a, b in pairs if jnp.max(jnp.abs(b)) > 1e-4 * largest)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--change", required=True, choices=CHANGES)
  parser.add_argument("--models", default="v1,v2,v3_large,v3_small")
  parser.add_argument("--rounds", type=int, default=6, help="timed calls of each variant")
  args = parser.parse_args()
  options = benchmark.parse_args(["--malloc", "default"])
  runner = lambda name, on: jax_runners.jax_runner(  # noqa: E731
      name, "train", 32, 224, "float32",
      argparse.Namespace(**{**vars(options), "conv_norm_act": kernels(args.change, on)}))
  print(f"{args.change}: gradients with vs without, largest relative difference: "
        f"{gradient_difference(args.change):.1e}", flush=True)
  for key in args.models.split(","):
    name = benchmark.MODELS[key]
    runners = {"without": runner(name, False), "with": runner(name, True)}
    times = {variant: [] for variant in runners}
    for runner in runners.values():
      runner.step()
      runner.step()
    for _ in range(args.rounds):
      for variant, runner in runners.items():
        time.sleep(0.05)
        start = time.perf_counter()
        runner.step()
        times[variant].append((time.perf_counter() - start) * 1e3)
    row = "  ".join(f"{v} median {np.median(t):7.1f} ms (min {min(t):7.1f}, "
                    f"peak {runners[v].peak_bytes / 2**20:5.0f} MB)" for v, t in times.items())
    change = np.median(times["with"]) / np.median(times["without"]) - 1
    print(f"{name:20s} {row}  {change:+.0%}", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_retained_memory(sys.argv)
  main()
