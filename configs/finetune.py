"""Fine-tune pretrained weights on your own images (or any TFDS dataset): the transfer recipe.

    python -m mobilenet_jax.convert --source=tflite --weights=tf2_mobilenet_v2_1.0_224_ptq.tflite \
        --out=pretrained/v2
    python -m mobilenet_jax.main --config=configs/finetune.py:weights=pretrained/v2,data=cifar10-jpeg.tar.gz \
        --workdir=runs/finetune
    python -m mobilenet_jax.main --config=configs/finetune.py:weights=pretrained/v2,data=cifar10-jpeg.tar.gz,trainable=head \
        --workdir=runs/linear_probe                      # linear probe: the classifier only

Arguments: weights (a checkpoint written by `python -m mobilenet_jax.convert`), data (an image folder
`train/<class>/*`, `val/` or `test/`, or an archive of one; or a TFDS name such as `cifar10`),
resolution (112), epochs (3), trainable (`all`, or `head` for a linear probe), batch (64),
lr (the peak learning rate per 64 images; 0: 0.003 for `all`, 0.1 for `head`), augment
(`pad_crop_flip`: pad 4 pixels of the stored image, random crop, flip, then resize; `inception_crop_flip`
for large photographs with the object anywhere).

What it does: the network, its options and the input normalisation come from the weights' model.json
(`init_from`; TF and Keras weights want inception x/127.5 - 1); a new classifier for the dataset's classes;
weights from a `.tflite` file get BatchNorm statistics measured on 256 training images first (TFLite
folds BatchNorm away). Evaluation resizes the whole image to `resolution` (no crop), so small images
such as CIFAR's 32x32 are upsampled, as BiT does for small-image datasets.

Recipe, from the transfer-learning literature: SGD with Nesterov momentum 0.9 and a cosine decay to 0
(Kornblith, Shlens & Le, "Do Better ImageNet Models Transfer Better?", CVPR 2019, section 3: fine-tuning
with Nesterov momentum and a learning rate annealed to 0, batch norm statistics updated); a short linear
warm-up, images of small datasets upsampled (to 128 px there) with crop-and-flip augmentation, a peak rate
of 0.003 and a few hundred to a few thousand steps (Kolesnikov et al., "Big Transfer (BiT)", ECCV 2020,
section 3.3, the BiT-HyperRule); weight decay off (a few epochs from good weights). The rate here is 0.003
per 64 images: 0.01 made the loss jump at the end of the warm-up and scored 62% after one CIFAR-10 epoch
at 96 px, 0.003 scored 83% at 112 px. `trainable=head` freezes everything but the classifier and runs
it in inference mode (BatchNorm statistics as loaded, as Keras's `trainable = False`): the linear
probe of Kornblith et al. (their logistic regression on frozen features, here trained by SGD).

Hardware: any CPU or accelerator. Measured on a 2-core CPU, MobileNetV2 1.0 from the TF2 release
(`tf2_mobilenet_v2_1.0_224_ptq.tflite`) on CIFAR-10 (50,000 training JPEGs, all 10,000 test images):
see the README's "Fine-tune on your images" and `experiments/results/finetune_cifar10.json`
(`python experiments/finetune_cifar10.py` runs it and writes that file).
"""

from __future__ import annotations

import os

import ml_collections

from mobilenet_jax.configs import common
from mobilenet_jax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, weights="", data="", resolution=112, epochs=3.0, trainable="all",
                          batch=64, lr=0.0, augment="pad_crop_flip")
  config = base_config()
  config.init_from = args.weights          # the model and its normalisation come from here
  config.trainable = args.trainable
  if args.data and (os.path.exists(args.data) or os.sep in args.data):
    config.dataset.name, config.dataset.data_dir = "folder", args.data
  elif args.data:
    config.dataset.name = args.data        # a TFDS name
  config.dataset.augment = args.augment
  config.dataset.pad_pixels = 4
  config.dataset.shuffle_buffer = 50_000
  config.resolution = args.resolution
  config.batch_size = args.batch
  config.eval_batch_size = 250
  config.num_epochs = args.epochs
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 0.0
  config.schedule.name = "cosine"
  config.schedule.learning_rate = args.lr or (0.003 if args.trainable == "all" else 0.1)
  config.schedule.base_batch_size = 64
  config.schedule.warmup_epochs = 0.1
  config.label_smoothing = 0.0
  config.ema_decay = 0.0
  config.log_every_steps = 50
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 1
  return config
