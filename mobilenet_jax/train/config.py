"""Every training option with its default (`base_config()`), and the checks run before any compile.

The files in `configs/` start from `base_config()` and override a few fields; `train_and_evaluate`
refuses keys that are not here (a typo must not silently train with a default).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from mobilenet_jax.train import optim


def base_config() -> ml_collections.ConfigDict:
  """All fields, documented; values are generic defaults (an ImageNet-style RMSProp recipe)."""
  from mobilenet_jax.data import default_dataset_config  # the data layer owns config.dataset

  c = ml_collections.ConfigDict()
  # Model: `name` plus any `create_model` option. None = the `init_from` checkpoint's value
  # (its model.json) when there is one, else the network's own default (shown after the colon).
  c.model = ml_collections.ConfigDict(dict(
      name=config_dict.placeholder(str),             # None: mobilenet_v2
      width_multiplier=config_dict.placeholder(float),  # None: 1.0
      expansion=config_dict.placeholder(float),      # MobileNetV2 only: t of every t=6 stage
      dropout_rate=config_dict.placeholder(float),   # None: the network's (0.2 for V2/V3)
      drop_path_rate=0.0,                            # stochastic depth (Huang et al. 2016)
      bn_momentum=config_dict.placeholder(float),    # None: 0.99 (Flax momentum = TF decay)
      bn_epsilon=config_dict.placeholder(float),     # None: 1e-3 (TF/Keras)
      padding=config_dict.placeholder(str),          # None: "same" (TF) | "symmetric" | "keras"
      compute="auto",                                # "auto" | "xla" | "cpu" (compute.py)
      small_input=0,                                 # 1: stem at stride 1; 2: also the first stage
  ))
  c.dataset = default_dataset_config()
  c.resolution = 224
  c.batch_size = 1024             # global, over all devices and hosts
  c.eval_batch_size = 0           # 0: batch_size
  c.num_epochs = 100.0
  c.num_train_steps = -1          # > 0 overrides num_epochs
  c.seed = 0

  c.optimizer = ml_collections.ConfigDict(dict(
      name="rmsprop",               # rmsprop (TF1 semantics) | sgd | adamw
      momentum=0.9,
      nesterov=False,
      rmsprop_decay=0.9,
      rmsprop_initial_scale=1.0,    # TF1: mean square starts at 1 (PyTorch: 0)
      rmsprop_eps_in_sqrt=True,     # TF1: sqrt(ms + eps) (Keras/PyTorch: sqrt(ms) + eps)
      eps=1e-3,
      b1=0.9,                       # adamw
      b2=0.999,
      weight_decay=1e-5,            # L2 (wd * w added to the gradient); adamw: decoupled
      weight_decay_on="kernels",    # kernels | kernels_except_depthwise | all
      grad_clip_norm=0.0,           # > 0: clip the global gradient norm
  ))
  c.schedule = ml_collections.ConfigDict(dict(
      name="exponential",           # exponential | cosine | constant
      learning_rate=0.016,
      base_batch_size=256,          # > 0: lr scaled by batch_size / base_batch_size
      warmup_epochs=5.0,
      decay_rate=0.97,              # exponential: factor per decay_epochs
      decay_epochs=2.4,
      staircase=True,
      end_lr_factor=0.0,            # cosine end value / exponential floor, times the peak lr
  ))
  c.label_smoothing = 0.1
  c.ema_decay = 0.0               # > 0: EMA of params and batch statistics, evaluated as its own model
  c.ema_warmup = True             # TF: decay min(ema_decay, (1 + t) / (10 + t))
  c.bn_group_size = 0             # 0: BatchNorm over the global batch; N: groups of N images
  c.half_precision = False        # bfloat16 activations; params and BN statistics stay float32

  c.log_every_steps = 100
  c.eval_every_steps = 0          # 0: evaluate at the end only
  c.checkpoint_every_steps = 1000  # 0: at the end (and on SIGTERM) only
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.init_from = ""                # directory written by mobilenet_jax.pretrained.save_pretrained
  c.trainable = "all"             # all | head: train only the classifier (linear probe), the rest
                                  # frozen in inference mode (BatchNorm statistics as loaded)
  c.eval_only = False             # evaluate the latest checkpoint (or init_from) and stop
  c.distributed = False           # jax.distributed.initialize() (multi-host); or env var
  c.progress_bar = "auto"         # auto (when stderr is a terminal) | on | off
  # JAX's persistent compilation cache: None = ~/.cache/mobilenet_jax/jax, "" = off, or a folder.
  c.compilation_cache = config_dict.placeholder(str)
  c.tensorboard = True
  return c


def _flat_keys(config: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and name != "model":
      out.update(_flat_keys(value, name + "."))
    elif name == "model":
      out.update({f"model.{k}": v for k, v in value.items()})
    else:
      out[name] = value
  return out


def _unknown_key(key: str, known: Any) -> str:
  """The error naming the closest known key: the same field in another group first
  (optimizer.learning_rate -> schedule.learning_rate), else the closest spelling."""
  leaf = key.rsplit(".", 1)[-1]
  same_field = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
  close = same_field[:1] or difflib.get_close_matches(key, known, n=1)
  hint = f"; did you mean {close[0]!r}?" if close else ""
  return f"unknown config key {key!r}{hint} (all keys: mobilenet_jax.train.base_config())"


def unknown_override(argv: list[str]) -> str | None:
  """The error for the first `--config.KEY=VALUE` flag whose KEY is not a config field (naming the
  closest one), or None; ml_collections' flag parser itself only raises AttributeError."""
  known = _flat_keys(base_config())
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in known and not key.startswith("model."):
        return _unknown_key(key, known)
  return None


def complete_config(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
  """`base_config()` updated with `config`; an unknown key is an error naming the closest one.

  `config.model` may also hold other `create_model` options (checked by `create_model`).
  """
  base = base_config()
  known = _flat_keys(base)
  given = _flat_keys(config)
  for key in given:
    if key not in known and not key.startswith("model."):
      raise ValueError(_unknown_key(key, known))
  merged = base.to_dict()
  for key, value in given.items():
    node = merged
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return ml_collections.ConfigDict(merged)


def validate_config(config: ml_collections.ConfigDict, device_count: int,
                    process_count: int = 1) -> None:
  """Clear errors for values no run can use, before anything is compiled."""
  import mobilenet_jax
  from mobilenet_jax.train import state

  if config.trainable not in optim.TRAINABLE:
    raise ValueError(f"trainable must be one of {optim.TRAINABLE}, got {config.trainable!r}")
  if config.trainable != "all" and not config.init_from:
    raise ValueError(f"trainable={config.trainable!r} freezes the network, which only makes sense "
                     "for pretrained weights: set init_from, or trainable=all")
  if state.model_name(config) not in mobilenet_jax.list_models():
    raise ValueError(f"unknown model.name {state.model_name(config)!r}; valid: "
                     f"{', '.join(mobilenet_jax.list_models())}")
  try:  # create_model checks every model option
    model = state.create_model(config, num_classes=1)
  except ValueError as error:
    raise ValueError(f"model.{error}") from error
  if config.resolution < model.min_resolution:
    raise ValueError(f"resolution must be >= {model.min_resolution} (five stride-2 layers, "
                     f"model.small_input={model.small_input}), got {config.resolution}")
  for name in ("batch_size", "eval_batch_size"):
    value = config[name] or config.batch_size
    if value <= 0 or value % device_count or value % process_count:
      raise ValueError(f"{name}={value} must be a positive multiple of the device count "
                       f"({device_count}) and of the host count ({process_count})")
  if config.bn_group_size < 0 or (config.bn_group_size and
                                  config.batch_size % config.bn_group_size):
    raise ValueError(f"bn_group_size={config.bn_group_size} must be 0 (global batch) or divide "
                     f"batch_size={config.batch_size}")
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {optim.OPTIMIZERS}, got "
                     f"{config.optimizer.name!r}")
  if config.schedule.name not in optim.SCHEDULES:
    raise ValueError(f"schedule.name must be one of {optim.SCHEDULES}, got {config.schedule.name!r}")
  if config.optimizer.weight_decay_on not in optim.WEIGHT_DECAY_TARGETS:
    raise ValueError(f"optimizer.weight_decay_on must be one of {optim.WEIGHT_DECAY_TARGETS}")
  _validate_optimizer_numbers(config)
  if not 0 <= config.ema_decay < 1:
    raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
  if not 0 <= config.label_smoothing < 1:
    raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise ValueError("set num_epochs > 0 or num_train_steps > 0")
  if config.log_every_steps <= 0:
    raise ValueError(f"log_every_steps must be > 0, got {config.log_every_steps}")
  if config.progress_bar not in ("auto", "on", "off"):
    raise ValueError(f"progress_bar must be auto, on or off, got {config.progress_bar!r}")


# (field, lowest, highest, whether the lowest is allowed); highest None: no upper bound.
_OPTIMIZER_RANGES = (
    ("schedule.learning_rate", 0.0, None, True),
    ("schedule.base_batch_size", 0, None, True),
    ("schedule.warmup_epochs", 0.0, None, True),
    ("schedule.decay_rate", 0.0, None, False),
    ("schedule.decay_epochs", 0.0, None, False),
    ("schedule.end_lr_factor", 0.0, None, True),
    ("optimizer.momentum", 0.0, 1.0, True),
    ("optimizer.rmsprop_decay", 0.0, 1.0, True),
    ("optimizer.rmsprop_initial_scale", 0.0, None, True),
    ("optimizer.eps", 0.0, None, False),
    ("optimizer.b1", 0.0, 1.0, True),
    ("optimizer.b2", 0.0, 1.0, True),
    ("optimizer.weight_decay", 0.0, None, True),
    ("optimizer.grad_clip_norm", 0.0, None, True),
)


def _validate_optimizer_numbers(config: ml_collections.ConfigDict) -> None:
  """A NaN, infinite or out-of-range optimizer or schedule number is an error before compiling
  (else the first step, after the whole compilation, stops on a non-finite update). Momentum and
  decay factors must lie in [0, 1), as optax's and PyTorch's optimizers require of them."""
  for key, low, high, low_allowed in _OPTIMIZER_RANGES:
    group, name = key.split(".")
    value = config[group][name]
    in_range = (isinstance(value, (int, float)) and math.isfinite(value)
                and (value >= low if low_allowed else value > low)
                and (high is None or value < high))
    if not in_range:
      bound = f"[{low}, {high})" if high is not None else (
          f">= {low}" if low_allowed else f"> {low}")
      raise ValueError(f"{key} must be a finite number {bound}, got {value!r}; fix "
                       f"--config.{key}")
