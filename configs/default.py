"""MobileNetV2 on the embedded digits: the default job, sized for a 2-core CPU.

    python -m mobilenet_jax.main --workdir=runs/default

Hardware: any CPU (tuned on 2 cores). Expected: >= 97% eval top-1 on the 360 held-out digits
(measured with seeds 0/1/2: 0.981/0.978/0.986 top-1; 20 epochs = 440 steps; its duration: the
README). Higher rates are unstable: lr 0.1 diverged on this job, lr 0.05
with expansion t=2 on one seed of three.
The 1,437 training digits (8x8 scikit-learn images upscaled to 32x32) train a width-0.5 network
with SGD + Nesterov; BatchNorm momentum 0.9 so running averages settle within the short run.
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base_config()
  config.model.name = "mobilenet_v2"
  config.model.width_multiplier = 0.5
  config.model.dropout_rate = 0.1
  config.model.bn_momentum = 0.9
  config.dataset.name = "digits"
  config.resolution = 32
  config.batch_size = 64
  config.num_epochs = 20.0
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-5
  config.schedule.name = "cosine"
  config.schedule.learning_rate = 0.03
  config.schedule.base_batch_size = 0
  config.schedule.warmup_epochs = 1.0
  config.label_smoothing = 0.0
  config.ema_decay = 0.0
  config.log_every_steps = 44
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 0
  config.keep_checkpoints = 1
  return config
