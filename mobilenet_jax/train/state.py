"""The model built from `config.model` and the train state (one pytree, checkpointed as a whole)."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

import mobilenet_jax
from mobilenet_jax.models.initialization import TracedInit, trace_init
from mobilenet_jax.models.norm import GroupedBatchNorm


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  ema_params / ema_batch_stats are None when `config.ema_decay` is 0. `rng` is a raw uint32 key;
  step t uses `fold_in(rng, t)`, so a resumed run draws the same dropout masks.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any
  rng: jax.Array

  def variables(self, ema: bool = False) -> dict[str, Any]:
    """Flax variables of the trained model, or of its moving average."""
    if ema:
      return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
    return {"params": self.params, "batch_stats": self.batch_stats}


DEFAULT_MODEL = "mobilenet_v2"


def model_name(config: ml_collections.ConfigDict) -> str:
  """`config.model.name`, or the default network when it is None (and no checkpoint named one)."""
  return config.model.name or DEFAULT_MODEL


def compute_dtype(config: ml_collections.ConfigDict):
  """bf16 activations with f32 params and f32 BatchNorm statistics when `half_precision`."""
  return jnp.bfloat16 if config.half_precision else jnp.float32


def model_options(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """`create_model` options: every set field of `config.model` except `name`, plus dtype and norm."""
  options = {k: v for k, v in config.model.to_dict().items() if k != "name" and v is not None}
  options["num_classes"] = num_classes
  options["dtype"] = compute_dtype(config)
  if config.bn_group_size > 0:
    options["norm_layer"] = functools.partial(
        GroupedBatchNorm, group_size=config.bn_group_size,
        momentum=options.get("bn_momentum", 0.99), epsilon=options.get("bn_epsilon", 1e-3),
        dtype=options["dtype"])
  return options


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  return mobilenet_jax.create_model(model_name(config), **model_options(config, num_classes))


def init_variables(model, resolution: int, key: jax.Array) -> dict[str, Any]:
  images = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
  variables = model.init(key, images, train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def state_from_variables(variables: dict[str, Any], tx: optax.GradientTransformation,
                         seed: int, ema: bool) -> TrainState:
  params, batch_stats = variables["params"], variables["batch_stats"]
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params),
                    ema_params=copy(params) if ema else None,
                    ema_batch_stats=copy(batch_stats) if ema else None,
                    rng=jax.random.PRNGKey(seed + 1))


def _init_fn(config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation):
  ema = config.ema_decay > 0

  def init(key):
    variables = init_variables(model, config.resolution, key)
    return state_from_variables(variables, tx, config.seed, ema)

  return init


def trace_state_init(config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation,
                     sharding: jax.sharding.Sharding) -> TracedInit:
  """The fresh state's initialisation under jit, traced once (replicated with `sharding`).

  `abstract_train_state` reads the shapes from it and `create_train_state` compiles and runs it,
  so a job traces the network's init once, not twice (each trace costs start-up time).
  """
  return trace_init(_init_fn(config, model, tx), jax.random.PRNGKey(config.seed),
                    out_shardings=sharding)


def abstract_train_state(init: TracedInit) -> TrainState:
  """Shapes, dtypes and shardings of the state (`trace_state_init`): what the steps compile against."""
  return init.out_info


def create_train_state(init: TracedInit) -> TrainState:
  """A fresh state from `trace_state_init`, on the devices (replicated)."""
  return init()


def with_variables(state: TrainState, variables: dict[str, Any],
                   sharding: jax.sharding.Sharding) -> TrainState:
  """`state` with new params and batch statistics (and EMA restarted from them).

  The optimizer state is kept: every optimizer here initialises it independently of the values.
  """
  # Host arrays straight to the devices (`jnp.asarray` of a numpy array compiles a program per shape).
  put = lambda tree: jax.device_put(tree, sharding)
  params, batch_stats = put(variables["params"]), put(variables["batch_stats"])
  ema = state.ema_params is not None
  return state.replace(params=params, batch_stats=batch_stats,
                       ema_params=put(variables["params"]) if ema else None,
                       ema_batch_stats=put(variables["batch_stats"]) if ema else None)
