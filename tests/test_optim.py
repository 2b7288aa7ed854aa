"""Optimizers, schedules and weight-decay masks of mobilenet_jax.train.optim."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mobilenet_jax
from mobilenet_jax.train import base_config, optim


def _config(**overrides):
  config = base_config()
  config.batch_size = 256
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_rmsprop_is_tf1_rmsprop_on_a_hand_computed_example():
  """TF1 ApplyRMSProp: ms <- rho ms + (1-rho) g^2 (ms starts at 1); mom <- m mom + lr g /
  sqrt(ms + eps); w <- w - mom."""
  lr, rho, momentum, eps = 0.1, 0.9, 0.9, 1e-3
  config = _config(**{"optimizer.name": "rmsprop", "optimizer.rmsprop_decay": rho,
                      "optimizer.momentum": momentum, "optimizer.eps": eps,
                      "optimizer.weight_decay": 0.0})
  tx = optim.create_optimizer(config, optax.constant_schedule(lr))
  w = jnp.array([1.0, -2.0])
  grads = [np.array([0.5, 0.1]), np.array([-0.3, 0.2]), np.array([0.05, -1.0])]
  state = tx.init(w)
  ms, mom, w_ref = np.ones(2), np.zeros(2), np.array([1.0, -2.0])
  for i, g in enumerate(grads):
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, w)
    w = optax.apply_updates(w, updates)
    ms = rho * ms + (1 - rho) * g ** 2
    mom = momentum * mom + lr * g / np.sqrt(ms + eps)
    w_ref = w_ref - mom
    if i == 0:  # by hand: ms = 0.925, mom = 0.05 / sqrt(0.926) = 0.0519594...
      np.testing.assert_allclose(w[0], 1 - 0.05 / np.sqrt(0.926), rtol=1e-6)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_l2_on_a_hand_computed_example(nesterov):
  """Heavy ball (Polyak) and Nesterov momentum in Sutskever et al.'s form, as PyTorch documents
  `torch.optim.SGD`: b <- m b + g; w <- w - lr b, or w <- w - lr (g + m b) with Nesterov. The L2
  weight decay of the TF recipes joins the gradient first: g = grad + wd w (kernels only)."""
  lr, m, wd = 0.1, 0.9, 0.01
  config = _config(**{"optimizer.name": "sgd", "optimizer.momentum": m,
                      "optimizer.nesterov": nesterov, "optimizer.weight_decay": wd})
  tx = optim.create_optimizer(config, lambda _: lr)
  params = {"conv": {"kernel": jnp.array([1.0, -2.0])}, "norm": {"bias": jnp.array([0.5])}}
  grads = [({"conv": {"kernel": np.array([0.5, 0.1])}, "norm": {"bias": np.array([0.2])}}),
           ({"conv": {"kernel": np.array([-0.3, 0.2])}, "norm": {"bias": np.array([-0.4])}}),
           ({"conv": {"kernel": np.array([0.05, -1.0])}, "norm": {"bias": np.array([0.1])}})]
  state = tx.init(params)
  w, b = {"kernel": np.array([1.0, -2.0]), "bias": np.array([0.5])}, {"kernel": 0.0, "bias": 0.0}
  for i, grad in enumerate(grads):
    updates, state = tx.update(jax.tree.map(jnp.float32, grad), state, params)
    params = optax.apply_updates(params, updates)
    for name, value in (("kernel", grad["conv"]["kernel"]), ("bias", grad["norm"]["bias"])):
      g = value + (wd * w[name] if name == "kernel" else 0.0)
      b[name] = m * b[name] + g
      w[name] = w[name] - lr * (g + m * b[name] if nesterov else b[name])
    if i == 0:  # by hand: g = 0.5 + 0.01 = 0.51, b = 0.51; Nesterov steps 0.1 x 1.9 x 0.51
      np.testing.assert_allclose(params["conv"]["kernel"][0],
                                 1 - 0.1 * (1.9 if nesterov else 1.0) * 0.51, rtol=1e-6)
    np.testing.assert_allclose(params["conv"]["kernel"], w["kernel"], rtol=1e-5)
    np.testing.assert_allclose(params["norm"]["bias"], w["bias"], rtol=1e-5)


def test_adamw_decays_kernels_decoupled():
  w, g = jnp.array([1.0, 2.0]), jnp.array([0.5, -0.5])
  adamw = optim.create_optimizer(_config(**{"optimizer.name": "adamw", "optimizer.eps": 1e-8,
                                            "optimizer.weight_decay": 0.05}), lambda _: 0.1)
  params = {"conv": {"kernel": w}, "norm": {"scale": w}}
  grads = {"conv": {"kernel": g}, "norm": {"scale": g}}
  updates = adamw.update(grads, adamw.init(params), params)[0]
  # Decoupled decay on the kernel only (AdamW, arXiv:1711.05101): lr * (adam + wd * w).
  adam = -0.1 * np.sign(np.asarray(g))
  np.testing.assert_allclose(updates["norm"]["scale"], adam, rtol=1e-5)
  np.testing.assert_allclose(updates["conv"]["kernel"], adam - 0.1 * 0.05 * np.asarray(w), rtol=1e-5)


def test_exponential_staircase_schedule_with_warmup():
  # V3 paper recipe shape: 0.1 at batch 4096, x0.99 every 3 epochs, after a linear warmup.
  config = _config(**{"schedule.name": "exponential", "schedule.learning_rate": 0.1,
                      "schedule.base_batch_size": 4096, "schedule.warmup_epochs": 2.0,
                      "schedule.decay_rate": 0.99, "schedule.decay_epochs": 3.0,
                      "schedule.staircase": True})
  config.batch_size = 2048  # linear scaling: peak 0.05
  steps_per_epoch = 100
  lr = optim.create_learning_rate_schedule(config, steps_per_epoch, total_steps=10_000)
  expected = {0: 0.0, 100: 0.025, 200: 0.05, 499: 0.05, 500: 0.05 * 0.99, 799: 0.05 * 0.99,
              800: 0.05 * 0.99 ** 2, 200 + 300 * 20: 0.05 * 0.99 ** 20}
  for step, value in expected.items():
    np.testing.assert_allclose(lr(step), value, rtol=1e-5, atol=1e-9, err_msg=f"step {step}")


def test_exponential_smooth_and_floor_and_cosine_schedules():
  smooth = _config(**{"schedule.learning_rate": 0.045, "schedule.base_batch_size": 0,
                      "schedule.warmup_epochs": 0.0, "schedule.decay_rate": 0.98,
                      "schedule.decay_epochs": 1.0, "schedule.staircase": False,
                      "schedule.end_lr_factor": 0.5})
  lr = optim.create_learning_rate_schedule(smooth, 10, total_steps=10_000)
  np.testing.assert_allclose(lr(5), 0.045 * 0.98 ** 0.5, rtol=1e-6)   # V2: x0.98 per epoch
  np.testing.assert_allclose(lr(10 * 1000), 0.045 * 0.5, rtol=1e-6)    # floor
  cosine = _config(**{"schedule.name": "cosine", "schedule.learning_rate": 0.2,
                      "schedule.base_batch_size": 0, "schedule.warmup_epochs": 1.0,
                      "schedule.end_lr_factor": 0.1})
  lr = optim.create_learning_rate_schedule(cosine, 10, total_steps=110)
  for step, value in {5: 0.1, 10: 0.2, 60: 0.11, 110: 0.02}.items():
    np.testing.assert_allclose(lr(step), value, rtol=1e-5, err_msg=f"step {step}")


@pytest.fixture(scope="module")
def params():
  model = mobilenet_jax.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35,
                                     num_classes=3)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  return jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes["params"])


def _leaves(tree):
  return {"/".join(str(k.key) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_weight_decay_skips_batchnorm_and_biases(params):
  mask = _leaves(optim.weight_decay_mask(params, "kernels"))
  assert mask["classifier/kernel"] and mask["stem/conv/kernel"] and mask["head/kernel"]
  assert not mask["classifier/bias"] and not mask["head/bias"]
  assert not any(v for k, v in mask.items() if "/norm/" in k)
  assert all(v == k.endswith("kernel") for k, v in mask.items())
  no_dw = _leaves(optim.weight_decay_mask(params, "kernels_except_depthwise"))
  assert any("depthwise" in k for k in no_dw)
  assert all(v == (k.endswith("kernel") and "depthwise" not in k) for k, v in no_dw.items())
  # Through the optimizer: plain SGD with zero gradients moves only kernels, by lr * wd * w.
  config = _config(**{"optimizer.name": "sgd", "optimizer.momentum": 0.0,
                      "optimizer.weight_decay": 0.1})
  tx = optim.create_optimizer(config, lambda _: 1.0)
  updates = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0]
  for key, value in _leaves(updates).items():
    np.testing.assert_allclose(value, -0.1 if mask[key] else 0.0, err_msg=key)
