"""MobileNetV2 on CIFAR-10 (32x32): the recipe of the expansion-factor study, sized for a 2-core CPU.

    python -m mobilenet_jax.main --config=configs/cifar10.py --workdir=runs/cifar10      # tfds cifar10
    python -m mobilenet_jax.main --config=configs/cifar10.py --workdir=runs/cifar10 \
        --config.dataset.name=folder --config.dataset.data_dir=/data/cifar10-jpeg.tar.gz  # image folder
    python experiments/expansion_ablation.py --config=configs/cifar10.py --out=experiments/results/cifar10

Arguments: width (0.35), epochs (EPOCHS), small_input (0), t (6: expansion of every t=6 stage).
Either source gives the same preprocessing: the 32x32 images as they are (no resize or crop at eval),
"pad_crop_flip" training augmentation (pad 4, random 32x32 crop, horizontal flip: the usual CIFAR
recipe), ImageNet mean/std normalisation. The folder form reads `train/<class>/` and `test/<class>/`
(an archive is extracted once into the user cache folder); the 10 classes are the sorted folder names,
which is tfds's label order (airplane ... truck). Eval: all 10,000 test images.

The network is ImageNet's MobileNetV2 unchanged (5 stride-2 layers: a 1x1 map before the pooling), sized
so that a 3-seed sweep of five t values fits a 2-core CPU. `small_input=1` (the stem at stride 1, a 2x2
last map, as CIFAR papers adapt ImageNet networks) costs several times more per image.
SGD + Nesterov 0.9, lr 0.1 per 128 images with 1 warm-up epoch and cosine decay, weight decay 5e-4
(short CIFAR schedules need more than ImageNet's 4e-5), BN momentum 0.9, no dropout.

Hardware: any CPU (throughput per variant: `experiments/results/cifar10/`). Expected top-1
on the 10,000 test images after the EPOCHS epochs (seeds 0, 1, 2): t=6 55.5 / 57.1 / 55.9%, t=10 about
60%, t=1 about 53% (`experiments/results/cifar10/`, the README's expansion study). Six epochs are what a
3-seed sweep fits on 2 cores; accuracy still rises with longer schedules.
"""

from __future__ import annotations

import ml_collections

from mobilenet_jax.configs import common
from mobilenet_jax.train.config import base_config

EPOCHS = 6.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, width=0.35, epochs=EPOCHS, small_input=0, t=6.0)
  config = base_config()
  config.model.name = "mobilenet_v2"
  config.model.width_multiplier = args.width
  config.model.expansion = args.t
  config.model.small_input = args.small_input
  config.model.dropout_rate = 0.0
  config.model.bn_momentum = 0.9
  config.dataset.name = "cifar10"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.augment = "pad_crop_flip"
  config.dataset.pad_pixels = 4
  config.dataset.normalization = "imagenet"
  config.dataset.shuffle_buffer = 50_000
  config.resolution = 32
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = args.epochs
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = "cosine"
  config.schedule.learning_rate = 0.1
  config.schedule.base_batch_size = 128
  config.schedule.warmup_epochs = 1.0
  config.label_smoothing = 0.0
  config.ema_decay = 0.0
  config.log_every_steps = 100
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 1
  return config
