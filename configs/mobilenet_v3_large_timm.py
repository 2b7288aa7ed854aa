"""MobileNetV3-Large on ImageNet with timm's long recipe (a modern one: 600 epochs, drop path, EMA).

    python -m mobilenet_jax.main --config=configs/mobilenet_v3_large_timm.py:width=1.0,resolution=224 \
        --workdir=runs/v3l_timm

Hardware: 8 GPUs or a TPU v3-8/v4-8 (global batch 1024). Also takes `model=` (any create_model name),
e.g. `model=mobilenet_v2` (timm's mobilenetv2_100.ra_in1k: 72.9%).
Expected top-1: timm reports 75.77% (mobilenetv3_large_100, hfdocs training_script.mdx) with
RandAugment m9 and random erasing 0.2, which this project's input pipeline does not implement, so
expect somewhat less here. Not reproduced by this project (no ImageNet here).

Recipe (timm `--opt rmsproptf --opt-eps .001 -b 512 x 2 GPUs --lr .064 --sched step --decay-epochs 2.4
--decay-rate .973 --epochs 600 --weight-decay 1e-5 --drop 0.2 --drop-connect 0.2 --model-ema
--model-ema-decay 0.9999`, warmup 3 epochs): the V3 paper config (TF1 RMSProp, dropout 0.2, wd 1e-5,
EMA 0.9999, label smoothing 0.1) with lr 0.016 per 256 images, x0.973 every 2.4 epochs, drop path 0.2.
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.configs import common, mobilenet_v3_large


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, model="mobilenet_v3_large", width=1.0, resolution=224)
  config = mobilenet_v3_large.get_config(f"width={args.width},resolution={args.resolution}")
  config.model.name = args.model
  config.model.drop_path_rate = 0.2
  config.batch_size = 1024
  config.num_epochs = 600.0
  config.schedule.learning_rate = 0.016
  config.schedule.base_batch_size = 256
  config.schedule.warmup_epochs = 3.0
  config.schedule.decay_rate = 0.973
  config.schedule.decay_epochs = 2.4
  return config
