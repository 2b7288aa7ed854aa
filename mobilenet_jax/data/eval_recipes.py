"""How released weights were evaluated: each source's own eval preprocessing, as one record.

Accuracy of a released checkpoint depends on feeding it images prepared as its authors did:

- "central_crop" (TF-slim `inception_preprocessing.preprocess_for_eval`, used for every TF-slim,
  Keras and TFLite MobileNet): keep the central `crop_fraction` (0.875) of *each* side
  (`tf.image.central_crop`), resize that to resolution x resolution with TF1's `resize_bilinear`
  (align_corners=False, no half-pixel centres, no antialiasing), scale to [-1, 1].
- "resize_crop" (torchvision `ImageClassification`, timm `transforms_factory` eval): resize the
  shorter side to `resize_size` (torchvision 256, or 232 for its V2 weights; timm
  floor(resolution / crop_pct) = 256 at 224), antialiased, then centre-crop resolution x resolution;
  ImageNet mean/std, or the inception 0.5/0.5 for timm's `tf_*` ports and V1.

- "training" (weights this project trained, read from their training workdir): the trainer's own
  evaluation (`data/preprocess.eval_image`): the whole image, or its central `crop_fraction` of the
  shorter side for natural-image augmentation, resized with `tf.image.resize` (half-pixel centres).

`EvalRecipe.to_dict()` is stored in a converted checkpoint's model.json so that evaluating it later
prepares images the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np

from mobilenet_jax.data.config import NORMALIZATIONS

STYLES = ("central_crop", "resize_crop", "training")


@dataclasses.dataclass(frozen=True)
class EvalRecipe:
  style: str                       # "central_crop" (TF-slim), "resize_crop" (torchvision, timm) or
                                   # "training" (this project's trainer: data/preprocess.eval_image)
  resolution: int                  # side of the square the network sees
  normalization: str               # "inception", "imagenet" or "unit" (data.preprocess.normalize)
  crop_fraction: float = 0.875     # central_crop: fraction of each side kept; training: of the
                                   # shorter side (1: the whole image, squeezed to a square)
  resize_size: Optional[int] = None  # resize_crop: shorter side before the centre crop
  interpolation: str = "bilinear"  # resize_crop, training: tf.image.resize's method

  def __post_init__(self):
    if self.style not in STYLES:
      raise ValueError(f"eval recipe style must be one of {STYLES}, got {self.style!r}")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                       f"{self.normalization!r}")
    if self.resolution < 1 or not 0 < self.crop_fraction <= 1:
      raise ValueError(f"bad eval recipe {self}")
    if self.style == "resize_crop" and (self.resize_size or 0) < self.resolution:
      raise ValueError(f"resize_crop needs resize_size >= resolution, got {self}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "EvalRecipe":
    """The recipe `to_dict` wrote; ValueError for anything else (a file's record may be damaged)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(values, Mapping) or not set(values) <= fields:
      raise ValueError(f"an eval recipe is a dict of {sorted(fields)}, got {values!r}")
    try:
      return cls(**values)
    except TypeError as e:
      raise ValueError(f"bad eval recipe {dict(values)}: {e}") from None

  def describe(self) -> str:
    if self.style == "training":
      how = (f"the trainer's evaluation ({'whole image' if self.crop_fraction == 1 else f'centre crop {self.crop_fraction:g}'}, "
             f"{self.interpolation} resize)")
    elif self.style == "central_crop":
      how = f"central crop {self.crop_fraction:g} of each side, bilinear resize"
    else:
      how = (f"{self.interpolation} resize of the shorter side to {self.resize_size}, centre crop")
    return f"{how} to {self.resolution}x{self.resolution}, {self.normalization} normalisation"


def tf_slim(resolution: int, normalization: str = "inception") -> EvalRecipe:
  """TF-slim / Keras / TFLite MobileNets (TF-slim `preprocess_for_eval`, central_fraction 0.875)."""
  return EvalRecipe("central_crop", resolution, normalization)


def torchvision(resolution: int = 224, resize_size: int = 256) -> EvalRecipe:
  """torchvision `ImageClassification(crop_size=224)` (resize_size 256; its V2 weights say 232)."""
  return EvalRecipe("resize_crop", resolution, "imagenet", resolution / resize_size, resize_size)


def timm(arch: str, resolution: int = 224, crop_pct: float = 0.875) -> EvalRecipe:
  """timm's pretrained_cfg for its MobileNets: crop_pct 0.875; `tf_*` ports bilinear with the
  inception mean/std (0.5), V1 bicubic with 0.5 too, the others bicubic with ImageNet mean/std."""
  base = arch.split(".")[0]
  inception = base.startswith(("tf_", "mobilenetv1"))
  return EvalRecipe("resize_crop", resolution, "inception" if inception else "imagenet", crop_pct,
                    int(np.floor(resolution / crop_pct)),
                    "bilinear" if base.startswith("tf_") else "bicubic")


def prepare(image, recipe: EvalRecipe):
  """uint8 [H, W, 3] (numpy or tf) -> float32 [R, R, 3] in the recipe's normalisation."""
  import tensorflow as tf

  from mobilenet_jax.data import preprocess

  image = tf.convert_to_tensor(image)
  if recipe.style == "training":   # what the run that made the weights evaluated on
    return preprocess.eval_image(
        image, crop_fraction=None if recipe.crop_fraction == 1 else recipe.crop_fraction,
        resolution=recipe.resolution, method=recipe.interpolation, antialias=True,
        normalization=recipe.normalization)
  if recipe.style == "central_crop":
    image = tf.image.central_crop(tf.cast(image, tf.float32), recipe.crop_fraction)
    image = tf.raw_ops.ResizeBilinear(images=image[None], size=[recipe.resolution] * 2,
                                      align_corners=False, half_pixel_centers=False)[0]
  else:
    shape = tf.cast(tf.shape(image)[:2], tf.float64)
    scale = recipe.resize_size / tf.reduce_min(shape)
    # torchvision/timm: the shorter side becomes resize_size, the longer int(long * size / short).
    # (float64 both: inside a tf.function a Python float becomes a float32 constant)
    size = tf.where(shape == tf.reduce_min(shape), tf.constant(recipe.resize_size, tf.float64),
                    tf.floor(shape * scale))
    image = tf.image.resize(image, tf.cast(size, tf.int32), method=recipe.interpolation,
                            antialias=True)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    top = tf.cast(tf.round((height - recipe.resolution) / 2), tf.int32)
    left = tf.cast(tf.round((width - recipe.resolution) / 2), tf.int32)
    image = image[top:top + recipe.resolution, left:left + recipe.resolution]
    image = tf.clip_by_value(image, 0.0, 255.0)   # bicubic overshoots
  return preprocess.normalize(image, recipe.normalization)
