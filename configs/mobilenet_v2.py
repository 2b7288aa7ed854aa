"""MobileNetV2 on ImageNet, the paper's recipe (V2 paper section 6.1).

    python -m mobilenet_jax.main --config=configs/mobilenet_v2.py:width=1.0,resolution=224,expansion=6 \
        --workdir=runs/v2

Hardware: 16 accelerators (the paper: 16 asynchronous GPU workers x 96 images; here one synchronous
global batch of 16 x 96 = 1536, BatchNorm over groups of 96 as each worker had).
Expected top-1 (V2 paper Table 4, TF-slim table): width 1.0: 72.0% @224, 1.4: 74.7%, 0.75: 69.8%,
0.5: 65.4%, 0.35: 60.3%. Not reproduced by this project (no ImageNet here). `expansion` changes
t of every t=6 stage (the expansion-factor ablation).

Recipe, verbatim: "RMSPropOptimizer with both decay and momentum set to 0.9 ... weight decay is set to
0.00004 ... initial learning rate of 0.045, and learning rate decay rate of 0.98 per epoch". TF1
RMSProp semantics (epsilon 1e-3 inside the square root, mean square starting at 1); BN decay 0.997
and epsilon 1e-3 as in TF-slim. The paper gives no epoch count: 300 (lr x0.0023 by then).
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.configs import common
from mobilenet_jax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, width=1.0, resolution=224, expansion=6.0)
  config = common.set_imagenet(base_config())  # base: TF1 RMSProp 0.9/0.9, eps 1e-3, staircase
  config.model.name = "mobilenet_v2"
  config.model.width_multiplier = args.width
  config.model.expansion = args.expansion
  config.model.bn_momentum = 0.997
  config.resolution = args.resolution
  config.batch_size = 1536
  config.bn_group_size = 96
  config.num_epochs = 300.0
  config.optimizer.weight_decay = 4e-5
  config.schedule.learning_rate = 0.045
  config.schedule.base_batch_size = 1536
  config.schedule.warmup_epochs = 0.0
  config.schedule.decay_rate = 0.98
  config.schedule.decay_epochs = 1.0
  config.label_smoothing = 0.0
  config.ema_decay = 0.0
  config.half_precision = True
  return config
