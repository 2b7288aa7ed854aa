"""Every training option with its default (`base_config()`), and the checks run before any compile.

The files in `configs/` start from `base_config()` and override a few fields; `train_and_evaluate`
refuses keys that are not here (a typo must not silently train with a default).
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections
from ml_collections import config_dict

from mobilenet_jax.train import optim


def base_config() -> ml_collections.ConfigDict:
  """All fields, documented; values are generic defaults (an ImageNet-style RMSProp recipe)."""
  from mobilenet_jax.data import default_dataset_config  # the data layer owns config.dataset

  c = ml_collections.ConfigDict()
  # Model: `name` plus any `create_model` option (None = the network's own default).
  c.model = ml_collections.ConfigDict(dict(
      name="mobilenet_v2",
      width_multiplier=1.0,
      expansion=config_dict.placeholder(float),      # MobileNetV2 only: t of every t=6 stage
      dropout_rate=config_dict.placeholder(float),   # None: the network's (0.2 for V2/V3)
      drop_path_rate=0.0,                            # stochastic depth (Huang et al. 2016)
      bn_momentum=0.99,                              # Flax momentum = TF BatchNorm decay
      bn_epsilon=1e-3,
      padding="same",                                # "same" (TF) | "symmetric" (PyTorch) | "keras"
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


def complete_config(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
  """`base_config()` updated with `config`; an unknown key is an error naming the closest one.

  `config.model` may also hold other `create_model` options (checked by `create_model`).
  """
  base = base_config()
  known = _flat_keys(base)
  given = _flat_keys(config)
  for key in given:
    if key not in known and not key.startswith("model."):
      close = difflib.get_close_matches(key, known, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"unknown config key {key!r}{hint} (all keys: mobilenet_jax.train."
                       "base_config())")
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

  if config.model.name not in mobilenet_jax.list_models():
    raise ValueError(f"unknown model.name {config.model.name!r}; valid: "
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
