"""The benchmark's JAX rows: `jax` (the inference program of `mobilenet_jax.inference_function`, and
the training step) and `jax_apply` (a plain `jax.jit(model.apply)`, as a newcomer writes it)."""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet_jax.compute import resolve_compute
from mobilenet_jax.inference import inference_function
from mobilenet_jax.models.initialization import init_variables as models_init_variables
from mobilenet_jax.models.registry import create_model
from mobilenet_jax.tools.timing import Runner
from mobilenet_jax.tools.workload import LEARNING_RATE, MOMENTUM, NUM_CLASSES


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


def benchmark_model(name: str, dtype: str, options: argparse.Namespace) -> Any:
  """The network of `name` with `options.compute`, or `options.conv_norm_act` where an A/B run
  (experiments/ab_train_step.py) sets a factory of its own."""
  layers = getattr(options, "conv_norm_act", None)
  how = {"conv_norm_act": layers} if layers is not None else {"compute": options.compute}
  return create_model(name, num_classes=NUM_CLASSES,
                      dtype=None if dtype == "float32" else jnp.dtype(dtype), **how)


def jax_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
               options: argparse.Namespace) -> Runner:
  model = benchmark_model(name, dtype, options)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((batch, resolution, resolution, 3), np.float32))
  variables = init_variables(model, resolution)
  if mode in ("infer", "latency"):
    notes = ["BN folded"]
    if resolve_compute(options.compute) == "cpu":
      from mobilenet_jax.xla_cpu.inference import loop_layout  # pylint: disable=g-import-not-at-top
      cpu_options = dict(micro_batch=options.micro_batch, side_by_side=options.side_by_side)
      size, count = loop_layout(batch, options.micro_batch, options.side_by_side)
      notes += [f"micro-batch {size}"] * bool(size) + [f"{count} side by side"] * (count > 1)
    else:
      cpu_options = {}
    predict, variables = inference_function(model, variables, options.compute, **cpu_options)
    note = ", ".join(notes)
    compiled, compile_s, lowered = _compile(predict, variables, images)
    return Runner(lambda: compiled(variables, images).block_until_ready(), compile_s,
                  _compiled_peak_bytes(compiled), _lowered_flops(lowered), note)

  tx, train_step = sgd_train_step(model, LEARNING_RATE, MOMENTUM)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32)
  params = jax.tree.map(jnp.copy, variables["params"])  # the step donates them; keep the cache
  state = [(params, jax.tree.map(jnp.copy, variables["batch_stats"]), tx.init(params))]
  key = jax.random.key(1)
  compiled, compile_s, lowered = _compile(train_step, state[0], images, labels, key, donate=(0,))

  def step():
    state[0], loss = compiled(state[0], images, labels, key)
    loss.block_until_ready()
  return Runner(step, compile_s, _compiled_peak_bytes(compiled), _lowered_flops(lowered))


def sgd_train_step(model: Any, learning_rate: float, momentum: float):
  """(tx, step): optax SGD with momentum, and the benchmarks' training step, not jitted:
  `step((params, batch_stats, opt_state), images, labels, key) -> (state, loss)` with softmax
  cross-entropy, BatchNorm in train mode and dropout on."""
  import optax  # pylint: disable=g-import-not-at-top
  tx = optax.sgd(learning_rate, momentum=momentum)

  def step(state, images, labels, key):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"], rngs={"dropout": key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
      return loss.mean(), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss
  return tx, step


def jax_apply_runner(name: str, mode: str, batch: int, resolution: int, dtype: str,
                     options: argparse.Namespace) -> Runner:
  """`jax.jit(model.apply)` of the unfolded network, for inference; no separate training step."""
  if mode == "train":
    raise ValueError("jax_apply measures inference only (its training step is jax's)")
  model = benchmark_model(name, dtype, options)
  images = jnp.asarray(np.random.default_rng(0).standard_normal(
      (batch, resolution, resolution, 3), np.float32))
  variables = init_variables(model, resolution)
  apply = jax.jit(functools.partial(model.apply, train=False))
  compiled, compile_s, lowered = _compile(apply, variables, images)
  return Runner(lambda: compiled(variables, images).block_until_ready(), compile_s,
                _compiled_peak_bytes(compiled), _lowered_flops(lowered), "jax.jit(model.apply)")
