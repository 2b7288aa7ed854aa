"""Pure train and eval steps, jitted over the mesh (batch sharded on `data`, state replicated)."""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mobilenet_jax.train import optim
from mobilenet_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (smoothed) one-hot labels (Szegedy et al. 2016, 7)."""
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing > 0:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """TF `ExponentialMovingAverage(decay, num_updates=step)`: min(decay, (1 + t) / (10 + t))."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch: Batch, *, model, tx: optax.GradientTransformation,
               learning_rate: Callable, num_classes: int, label_smoothing: float,
               ema_decay: float, ema_warmup: bool, trainable: str = "all"
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step. A non-finite loss, gradient or update leaves the state unchanged (`finite`=0
  in the metrics; the loop stops with an error naming the step), so no NaN ever reaches a checkpoint.

  `trainable="head"`: the network runs in inference mode (BatchNorm statistics as loaded, no dropout)
  and only the classifier is differentiated: no backward pass through the frozen layers.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  train_mask = optim.trainable_mask(state.params, trainable)

  def loss_fn(params):
    params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, train_mask)
    variables = {"params": params, "batch_stats": state.batch_stats}
    if trainable == "all":
      logits, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                    rngs={"dropout": rng})
    else:
      logits, updates = model.apply(variables, batch["image"], train=False), {}
    loss = cross_entropy(logits, batch["label"], num_classes, label_smoothing).mean()
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  if state.ema_params is not None:
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    new_state = new_state.replace(
        ema_params=optax.incremental_update(params, state.ema_params, 1.0 - decay),
        ema_batch_stats=optax.incremental_update(batch_stats, state.ema_batch_stats, 1.0 - decay))
  finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(updates)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                           state.replace(step=state.step + 1))
  metrics = {
      "train_loss": loss,
      "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "learning_rate": learning_rate(state.step),
      "grad_norm": optax.tree.norm(grads),
      "finite": finite,
  }
  return new_state, metrics


def eval_step(variables: dict[str, Any], batch: Batch, *, model,
              num_classes: int) -> dict[str, jax.Array]:
  """Sums over the real examples of the batch (`mask`), so padded examples never count."""
  logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  mask = batch["mask"].astype(jnp.float32)
  labels = batch["label"]
  loss = cross_entropy(logits, labels, num_classes)
  k = min(5, num_classes)
  top_k = jax.lax.top_k(logits, k)[1]
  in_top_k = jnp.any(top_k == labels[:, None], axis=-1)
  return {
      "eval_loss": jnp.sum(loss * mask),
      "eval_top1": jnp.sum((top_k[:, 0] == labels) * mask),
      "eval_top5": jnp.sum(in_top_k * mask),
      "count": jnp.sum(mask),
  }


def jit_train_step(config, model, tx, learning_rate, num_classes: int, state_sharding,
                   batch_sharding, replicated):
  step = functools.partial(train_step, model=model, tx=tx, learning_rate=learning_rate,
                           num_classes=num_classes, label_smoothing=config.label_smoothing,
                           ema_decay=config.ema_decay, ema_warmup=config.ema_warmup,
                           trainable=config.trainable)
  return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)


def jit_eval_step(model, num_classes: int, batch_sharding, replicated):
  step = functools.partial(eval_step, model=model, num_classes=num_classes)
  return jax.jit(step, in_shardings=(replicated, batch_sharding), out_shardings=replicated)


def batch_spec(batch_size: int, resolution: int, sharding, with_mask: bool = False
               ) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of the data interface: image f32 [B,R,R,3], label i32 [B] (, mask bool [B])."""
  spec = {"image": jax.ShapeDtypeStruct((batch_size, resolution, resolution, 3), jnp.float32,
                                        sharding=sharding),
          "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}
  if with_mask:
    spec["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.bool_, sharding=sharding)
  return spec


class BackgroundCompiled:
  """A jitted step compiled ahead of time in a thread (XLA releases the GIL while compiling).

  Compilation of the train and eval steps then overlaps the state initialisation and the input
  pipeline's start-up. Calls with other shapes than the abstract arguments fall back to the jit.
  """

  def __init__(self, jitted, *abstract_args):
    self._jitted = jitted
    self._future = concurrent.futures.Future()
    self.trace_s = self.compile_s = None  # seconds to trace and lower, and to compile (or load)
    self.started = time.perf_counter()      # when tracing began
    thread = threading.Thread(target=self._compile, args=abstract_args, daemon=True)
    thread.start()

  def _compile(self, *abstract_args):
    try:
      start = time.perf_counter()
      lowered = self._jitted.lower(*abstract_args)
      lowered_at = time.perf_counter()
      compiled = lowered.compile()
      self.trace_s, self.compile_s = lowered_at - start, time.perf_counter() - lowered_at
      self._future.set_result(compiled)
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the caller
      self._future.set_exception(e)

  def done(self) -> bool:
    """Whether the compilation has finished (or failed)."""
    return self._future.done()

  def wait(self) -> None:
    """Blocks until compiled (re-raises a compilation error)."""
    self._future.result()

  def __call__(self, *args):
    compiled = self._future.result()
    try:
      return compiled(*args)
    except TypeError:  # argument shapes/dtypes differ from the abstract ones
      return self._jitted(*args)
