"""The train step skips a non-finite update: the state is left as it was (params, BatchNorm
statistics, optimizer momentum, EMA), only the step counter moves, and `finite` says so.

The README promises this for a non-finite loss *or gradients*: here the loss stays finite while the
gradient is NaN, or +Inf, or the update is Inf (an infinite learning rate). A one-layer Flax module
makes each case exact; the step function is the one the training loop jits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from mobilenet_jax.train import state as state_lib
from mobilenet_jax.train import steps


class Probe(nn.Module):
  """Dense logits plus a term that is 0 in the forward pass and whose derivative at w = 0 is not
  finite: 0 * sqrt(w) has d/dw = 0 * inf = NaN; cbrt(w) on the first logit has d/dw = +-inf."""
  gradient: str   # "nan", "inf" or "finite"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x.reshape(len(x), -1))
    logits = nn.Dense(3)(x)
    w = self.param("w", nn.initializers.zeros, ())
    if self.gradient == "nan":
      return logits + 0.0 * jnp.sqrt(w)
    if self.gradient == "inf":
      return logits.at[:, 0].add(jnp.cbrt(w))
    return logits + w


CASES = {  # case -> (module's gradient, learning rate)
    "nan_gradient": ("nan", 0.1),
    "inf_gradient": ("inf", 0.1),
    "inf_update": ("finite", float("inf")),
}


@pytest.mark.parametrize("case", CASES)
def test_non_finite_gradient_or_update_with_a_finite_loss_is_skipped(case):
  gradient, learning_rate = CASES[case]
  model = Probe(gradient)
  tx = optax.sgd(learning_rate, momentum=0.9)
  x = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype(np.float32)   # one image: the
  batch = {"image": x, "label": np.array([1], np.int32)}   # +-inf of cbrt is not averaged away
  variables = model.init(jax.random.PRNGKey(0), x)
  state = state_lib.state_from_variables(variables, tx, seed=0, ema=True)
  # A state that is not the initial one: momentum and moved EMA, so "unchanged" means something.
  state = state.replace(step=jnp.asarray(7, jnp.int32),
                        opt_state=jax.tree.map(lambda t: t + 0.25, state.opt_state),
                        ema_params=jax.tree.map(lambda t: t - 0.5, state.ema_params))
  step = jax.jit(lambda s, b: steps.train_step(
      s, b, model=model, tx=tx, learning_rate=lambda _: learning_rate, num_classes=3,
      label_smoothing=0.0, ema_decay=0.9, ema_warmup=False))
  new, metrics = step(state, batch)

  assert np.isfinite(metrics["train_loss"]) and not metrics["finite"]
  if case == "inf_update":
    assert np.isfinite(metrics["grad_norm"])
  else:
    assert not np.isfinite(metrics["grad_norm"])
    assert np.isnan(metrics["grad_norm"]) == (gradient == "nan")
  assert int(new.step) == 8
  for field in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats", "rng"):
    jax.tree.map(np.testing.assert_array_equal, getattr(new, field), getattr(state, field))


def test_a_finite_step_updates_the_state():
  """The same step with a finite gradient does move every part of the state (the test above is
  not passing because nothing ever changes)."""
  model = Probe("finite")
  tx = optax.sgd(0.1, momentum=0.9)
  x = np.random.default_rng(0).normal(size=(2, 2, 2, 3)).astype(np.float32)
  batch = {"image": x, "label": np.array([1, 2], np.int32)}
  state = state_lib.state_from_variables(model.init(jax.random.PRNGKey(0), x), tx, seed=0,
                                         ema=True)
  new, metrics = steps.train_step(state, batch, model=model, tx=tx,
                                  learning_rate=lambda _: 0.1, num_classes=3,
                                  label_smoothing=0.0, ema_decay=0.9, ema_warmup=False)
  assert metrics["finite"] and int(new.step) == 1
  for field in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats"):
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           getattr(new, field), getattr(state, field))
    assert any(jax.tree.leaves(changed)), field
