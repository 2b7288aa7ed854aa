"""Runs a tiny training job on N simulated CPU devices and prints its train losses as JSON.

    python tests/multidevice_script.py WORKDIR NUM_DEVICES [BN_GROUP_SIZE]

XLA_FLAGS must be set before JAX is imported, hence a separate process (tests/test_train.py).
"""

import json
import os
import sys

import fast_compile


def tiny_config(bn_group_size: int = 0):
  """MobileNetV3-Small-minimal x0.35 on 32x32 digits, batch 32, 3 steps (also run in-process).

  A network and step size whose first steps are not chaotic: a tiny MobileNetV2 with BatchNorm
  over 16-32 images of 1x1 maps amplifies a 1e-7 change of its weights to a 1% change of the
  third loss, which would hide any comparison between device counts.
  """
  from mobilenet_jax import train

  config = train.base_config()
  config.model.name = "mobilenet_v3_small_minimal"
  config.model.width_multiplier = 0.35
  config.model.bn_momentum = 0.9
  config.dataset.name = "digits"
  config.resolution = 32
  config.batch_size = 32
  config.eval_batch_size = 64
  config.bn_group_size = bn_group_size
  config.num_train_steps = 3
  config.optimizer.name = "sgd"
  config.schedule.name = "constant"
  config.schedule.learning_rate = 0.01
  config.schedule.base_batch_size = 0
  config.schedule.warmup_epochs = 0.0
  config.log_every_steps = 1
  config.checkpoint_every_steps = 0
  config.tensorboard = False
  config.progress_bar = "off"
  return config


def main():
  num_devices = int(sys.argv[2])
  os.environ["XLA_FLAGS"] = fast_compile.xla_flags(
      f"--xla_force_host_platform_device_count={num_devices}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # compile fast; same numerics
  import jax

  from mobilenet_jax import train

  assert jax.device_count() == num_devices, jax.devices()
  group = int(sys.argv[3]) if len(sys.argv) > 3 else 0
  train.train_and_evaluate(tiny_config(group), sys.argv[1])
  records = train.read_metrics(sys.argv[1])
  print("RESULT " + json.dumps({
      "losses": [r["train_loss"] for r in records if "train_loss" in r],
      "eval_top1": [r["eval_top1"] for r in records if "eval_top1" in r],
      "evaluations": [{k: v for k, v in r.items() if k.startswith("eval_")}
                      for r in records if "eval_top1" in r],
      "devices": jax.device_count()}))


if __name__ == "__main__":
  main()
