"""MobileNetV3-Large on ImageNet, the paper's recipe (V3 paper section 6.1.1).

    python -m mobilenet_jax.main --config=configs/mobilenet_v3_large.py:width=0.75,resolution=192 \
        --workdir=runs/v3l

Hardware: "4x4 TPU Pod" (TPU v3-32: 32 replicas x 128 images = batch 4096); BatchNorm in groups of
128 images as each replica had. Smaller slices: lower --config.batch_size (the lr scales linearly).
Expected top-1 (V3 paper Table 3): 1.0 @224: 75.2%, 0.75 @224: 73.3%, minimal (minimal=True):
72.3%. Not reproduced by this project (no ImageNet here).

Recipe, verbatim: "RMSPropOptimizer with 0.9 momentum ... initial learning rate of 0.1, with batch size
4096 (128 images per chip), and learning rate decay rate of 0.01 every 3 epochs [read: x0.99]. We use
dropout of 0.8 [keep probability: rate 0.2], and l2 weight decay 1e-5 ... exponential moving average
with decay 0.9999 ... batch-normalization layers with average decay of 0.99". From the official
MnasNet TPU code, which the paper's setup follows: RMSProp decay 0.9, epsilon 1e-3, 5-epoch warmup,
label smoothing 0.1, EMA over BN statistics too, 350 epochs.
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.configs import common
from mobilenet_jax.train.config import base_config


def v3_paper_config(variant: str, arg: str | None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, width=1.0, resolution=224, minimal=False)
  config = common.set_imagenet(base_config())  # base: TF1 RMSProp 0.9/0.9, eps 1e-3, staircase
  config.model.name = f"mobilenet_v3_{variant}" + ("_minimal" if args.minimal else "")
  config.model.width_multiplier = args.width
  config.model.dropout_rate = 0.2
  config.model.bn_momentum = 0.99
  config.resolution = args.resolution
  config.batch_size = 4096
  config.bn_group_size = 128
  config.num_epochs = 350.0
  config.optimizer.weight_decay = 1e-5
  config.schedule.learning_rate = 0.1
  config.schedule.base_batch_size = 4096
  config.schedule.warmup_epochs = 5.0
  config.schedule.decay_rate = 0.99
  config.schedule.decay_epochs = 3.0
  config.label_smoothing = 0.1
  config.ema_decay = 0.9999
  config.half_precision = True
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return v3_paper_config("large", arg)
