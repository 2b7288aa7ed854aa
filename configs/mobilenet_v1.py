"""MobileNetV1 on ImageNet, the recipe of the official TF TPU code (V1 paper section 3.2).

    python -m mobilenet_jax.main --config=configs/mobilenet_v1.py:width=1.0,resolution=224 \
        --workdir=runs/v1

Hardware: a TPU pod slice or 8+ accelerators (global batch 1024; BN in groups of 128 per replica as
TPUEstimator did). ImageNet must be prepared for tensorflow-datasets (manual download).
Expected top-1 (V1 paper Tables 6-7): width 1.0: 70.6% @224, 69.1% @192, 67.2% @160, 64.4% @128;
0.75: 68.4%, 0.5: 63.7%, 0.25: 50.6% @224. Not reproduced by this project (no ImageNet here).

Recipe (github.com/tensorflow/tpu, models/official/mobilenet): RMSProp (TF1) decay 0.9,
momentum 0.9, epsilon 1.0; lr 0.165 per 256 images, x0.94 every 3 epochs (staircase) after a 5-epoch
warmup, floor 1e-4 of the peak; label smoothing 0.1; EMA 0.995 of weights and BN statistics; BN
decay 0.996, epsilon 1e-3; weight decay 4e-5 on kernels but "very little or no weight decay ... on
the depthwise filters" (paper 3.2), so depthwise kernels are skipped.
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.configs import common
from mobilenet_jax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, width=1.0, resolution=224)
  config = common.set_imagenet(base_config())  # base: TF1 RMSProp 0.9/0.9, staircase decay
  config.model.name = "mobilenet_v1"
  config.model.width_multiplier = args.width
  config.model.bn_momentum = 0.996
  config.resolution = args.resolution
  config.batch_size = 1024
  config.bn_group_size = 128
  config.num_epochs = 300.0
  config.optimizer.eps = 1.0
  config.optimizer.weight_decay = 4e-5
  config.optimizer.weight_decay_on = "kernels_except_depthwise"
  config.schedule.learning_rate = 0.165
  config.schedule.base_batch_size = 256
  config.schedule.warmup_epochs = 5.0
  config.schedule.decay_rate = 0.94
  config.schedule.decay_epochs = 3.0
  config.schedule.end_lr_factor = 1e-4
  config.label_smoothing = 0.1
  config.ema_decay = 0.995
  config.half_precision = True
  return config
