"""Optimizer, learning-rate schedule and weight-decay mask from the config (optax).

Recipes: the MobileNet papers trained with TF1 `RMSPropOptimizer`,
whose mean-square accumulator starts at 1 with epsilon inside the square root and the learning
rate applied inside the momentum accumulator; optax reproduces it exactly with
`optax.rmsprop(lr, decay, eps, initial_scale=1.0, eps_in_sqrt=True, momentum=m)`. Weight decay in
those recipes is an L2 loss `wd * sum(w^2) / 2` (TF-slim `l2_regularizer`) on kernels only, i.e.
`wd * w` added to the gradient before the optimizer (`optax.add_decayed_weights`). AdamW uses
decoupled decay instead (Loshchilov & Hutter, arXiv:1711.05101), as timm and TF Model Garden do.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine", "constant")
WEIGHT_DECAY_TARGETS = ("kernels", "kernels_except_depthwise", "all")
TRAINABLE = ("all", "head")
HEAD = ("classifier",)  # the layer a linear probe trains (a new one when the class count changes)

Schedule = Callable[[Any], Any]


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`schedule.learning_rate`, scaled linearly by batch_size / base_batch_size when that is > 0.

  (Goyal et al., arXiv:1706.02677; e.g. V3: 0.1 at 4096, timm: 0.016 per 256.)
  """
  sched = config.schedule
  if sched.base_batch_size > 0:
    return sched.learning_rate * config.batch_size / sched.base_batch_size
  return sched.learning_rate


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int, total_steps: int) -> Schedule:
  """Linear warmup from 0 to the peak, then the decay (which starts counting after the warmup).

  exponential: peak * decay_rate ** (t / (decay_epochs * steps_per_epoch)), floored to integer
    periods when `staircase` (TF `exponential_decay`), never below `end_lr_factor * peak`.
  cosine: from the peak to `end_lr_factor * peak` at `total_steps` (Loshchilov & Hutter SGDR).
  constant: the peak.
  """
  sched = config.schedule
  peak = peak_learning_rate(config)
  warmup_steps = int(round(sched.warmup_epochs * steps_per_epoch))
  if sched.name == "exponential":
    period = max(1, int(round(sched.decay_epochs * steps_per_epoch)))
    decay = optax.exponential_decay(peak, transition_steps=period, decay_rate=sched.decay_rate,
                                    staircase=sched.staircase,
                                    end_value=sched.end_lr_factor * peak or None)
  elif sched.name == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps=max(1, total_steps - warmup_steps),
                                        alpha=sched.end_lr_factor)
  elif sched.name == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {sched.name!r}")
  if warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params: Any, target: str = "kernels") -> Any:
  """True for the leaves that get weight decay.

  kernels: every conv/dense `kernel` (not BatchNorm scale/bias, not biases);
  kernels_except_depthwise: also skips depthwise kernels (V1 paper section 3.2: "very little or no
    weight decay ... on the depthwise filters"); all: every parameter.
  """
  if target not in WEIGHT_DECAY_TARGETS:
    raise ValueError(f"optimizer.weight_decay_on must be one of {WEIGHT_DECAY_TARGETS}, "
                     f"got {target!r}")

  def decays(path, _):
    names = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    if target == "all":
      return True
    if names[-1] != "kernel":
      return False
    return not (target == "kernels_except_depthwise" and "depthwise" in names)

  return jax.tree_util.tree_map_with_path(decays, params)


def trainable_mask(params: Any, trainable: str = "all") -> Any:
  """True for the leaves that train: every one ("all"), or the classifier's ("head", a linear probe:
  the rest is a frozen feature extractor, as Keras's `trainable = False` layers)."""
  if trainable not in TRAINABLE:
    raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: trainable == "all" or path[0].key in HEAD, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: Schedule) -> optax.GradientTransformation:
  """The optax transformation of `config.optimizer` driven by the `learning_rate` schedule."""
  opt = config.optimizer
  mask = lambda params: weight_decay_mask(params, opt.weight_decay_on)
  momentum = opt.momentum or None
  if opt.name == "rmsprop":
    base = optax.rmsprop(learning_rate, decay=opt.rmsprop_decay, eps=opt.eps,
                         initial_scale=opt.rmsprop_initial_scale,
                         eps_in_sqrt=opt.rmsprop_eps_in_sqrt, momentum=momentum,
                         nesterov=opt.nesterov)
  elif opt.name == "sgd":
    base = optax.sgd(learning_rate, momentum=momentum, nesterov=opt.nesterov)
  elif opt.name == "adamw":
    base = optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay, mask=mask, nesterov=opt.nesterov)
  else:
    raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {opt.name!r}")
  chain = []
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay > 0 and opt.name != "adamw":  # L2 in the loss: wd * w joins the gradient
    chain.append(optax.add_decayed_weights(opt.weight_decay, mask))
  chain.append(base)
  tx = optax.chain(*chain)
  trainable = config.get("trainable", "all")
  if trainable == "all":
    return tx
  # Frozen leaves: zero updates and no optimizer state (optax's recipe for freezing parameters).
  labels = lambda params: jax.tree.map(lambda t: "train" if t else "frozen",
                                       trainable_mask(params, trainable))
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
