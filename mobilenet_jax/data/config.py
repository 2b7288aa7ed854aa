"""`config.dataset`: the input-pipeline options and their defaults (the embedded digits)."""

from __future__ import annotations

import ml_collections

# Accepted values (validated by `dataset_info`; what "auto" means depends on the dataset, see sources.py).
AUGMENTATIONS = ("auto", "inception_crop_flip", "inception_crop", "pad_crop_flip", "pad_crop", "none")
NORMALIZATIONS = ("imagenet", "inception", "unit")
# torchvision / timm ImageNet statistics (RGB, on the 0..1 scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Each normalisation on 0..255 pixels as (mean, std) per channel: x = (pixel - mean) / std, as
# `data/preprocess.normalize` computes it (an exported uint8-input model normalises its input so).
PIXEL_NORMALIZATIONS = {
    "imagenet": (tuple(255 * m for m in IMAGENET_MEAN), tuple(255 * s for s in IMAGENET_STD)),
    "inception": ((127.5,) * 3, (127.5,) * 3),
    "unit": ((0.0,) * 3, (255.0,) * 3),
}
# Datasets of digits/characters: "auto" augmentation translates them and never flips them.
NO_FLIP_DATASETS = frozenset({"digits", "mnist", "emnist", "kmnist", "svhn_cropped",
                              "binary_alpha_digits", "fashion_mnist"})
RESIZE_METHODS = ("bilinear", "bicubic", "nearest", "area", "lanczos3", "lanczos5", "gaussian",
                  "mitchellcubic")


def default_dataset_config() -> ml_collections.ConfigDict:
  """The `config.dataset` sub-config, with defaults for the embedded `digits` dataset.

  Fields:
    name: "digits" (embedded, no download), "folder" (your own `data_dir/{train,val|test}/<class>/*`),
      or any tensorflow-datasets image-classification name ("imagenet2012", "cifar10", "imagenette", ...).
    data_dir: TFDS data directory (None: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`); for "folder" the
      root folder that holds `train/` and `val/` (or `test/`).
    train_split / eval_split: TFDS split strings (slicing allowed, e.g. "train[:90%]"); eval_split None
      picks "validation" when the dataset has it, else "test". For "folder": sub-folder names.
    resize_method: `tf.image.resize` method for every resize; antialias: low-pass when downscaling.
    crop_fraction: eval centre crop for natural images, the side of the central square kept before resizing
      to the resolution (0.875 = 224/256, Inception/ResNet convention); pad_crop datasets keep the whole image.
    normalization: "imagenet" ((x/255 - mean)/std, torchvision/timm), "inception" (x/127.5 - 1, TF-slim and
      Keras MobileNets), "unit" (x/255); None: what the `init_from` weights expect (their model.json), else
      "imagenet".
    augment: "auto" (natural images: "inception_crop_flip"; small images of digits: "pad_crop"),
      "inception_crop_flip" (random-resized crop, area 0.08-1, aspect 3/4-4/3, + horizontal flip),
      "inception_crop" (same without flip), "pad_crop" (pad `pad_pixels`, random crop back: translations
      only, no flips), "pad_crop_flip" (+ horizontal flip: the CIFAR recipe), "none".
    pad_pixels: padding of "pad_crop", in pixels of the stored image.
    shuffle_buffer: examples in the train shuffle buffer (per host), capped at the host's split size.
    cache: keep the encoded examples in memory after the first epoch (small datasets; ImageNet needs
      ~150 GB of RAM per full copy).
    download: prepare a missing dataset (download it, or for "digits" write it from scikit-learn).
    prefetch: batches prepared ahead of the trainer.
  """
  config = ml_collections.ConfigDict()
  config.name = "digits"
  # Typed placeholders (None by default) so that --config.dataset.data_dir=... works on the command line.
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.train_split = "train"
  config.eval_split = ml_collections.config_dict.placeholder(str)
  config.resize_method = "bilinear"
  config.antialias = True
  config.crop_fraction = 0.875
  config.normalization = ml_collections.config_dict.placeholder(str)  # None: see above
  config.augment = "auto"
  config.pad_pixels = 4
  config.shuffle_buffer = 16_384
  config.cache = True
  config.download = True
  config.prefetch = 2
  return config


def normalization(dataset_config) -> str:
  """The dataset's `normalization`, "imagenet" when unset (None)."""
  return dataset_config.get("normalization") or "imagenet"
