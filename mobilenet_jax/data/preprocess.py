"""Per-example image preprocessing in TensorFlow: decode, crop, flip, resize, normalise.

All randomness is *stateless*: every random op takes a `[2]` int seed derived from (seed, epoch, example
position) by the pipeline, so a given example is augmented identically whenever it is revisited (resume
after preemption replays the exact batches) and nothing depends on op-level random state.

Images arrive either encoded (a `tf.string` of JPEG/PNG bytes, as TFDS stores them; decoding is then
fused with the crop for JPEGs via `tf.io.decode_and_crop_jpeg`) or already decoded (`uint8 [H, W, 3]`).
"""

from __future__ import annotations

import tensorflow as tf

from mobilenet_jax.data.config import AUGMENTATIONS, IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS

# Inception-style random-resized crop (Szegedy et al. 2015, "Going deeper with convolutions", sec. 6:
# "patches whose size is distributed evenly between 8% and 100% of the image area with aspect ratio
# constrained to the interval [3/4, 4/3]"), with flax examples/imagenet's 10 attempts and 0.1 coverage.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_MAX_ATTEMPTS = 10
CROP_MIN_OBJECT_COVERED = 0.1

# Every function handed to tf.data (`Dataset.map`, `flat_map`) is wrapped in this: they are graph
# code already (tf.cond; Python branches only on static dtypes and config strings), so AutoGraph's
# source rewrite would only add start-up time (measured by `python experiments/startup_costs.py
# --studies autograph`, docs/startup.md). A Python branch on a tensor fails loudly here.
graph_function = tf.autograph.experimental.do_not_convert


def image_shape(image: tf.Tensor) -> tf.Tensor:
  """[height, width, channels] of an encoded (from its header, without decoding) or decoded image."""
  if image.dtype == tf.string:
    return _encoded_shape(image)
  return tf.shape(image)


def _encoded_shape(image_bytes: tf.Tensor) -> tf.Tensor:
  # JPEG headers give the shape without decoding; other formats (PNG, ...) are small in practice.
  return tf.cond(tf.io.is_jpeg(image_bytes),
                 lambda: tf.image.extract_jpeg_shape(image_bytes),
                 lambda: tf.shape(decode(image_bytes), out_type=tf.int32))


def decode(image: tf.Tensor) -> tf.Tensor:
  """Encoded bytes (JPEG, PNG, GIF, BMP; grey or RGBA) -> uint8 [H, W, 3]; decoded images pass through."""
  if image.dtype != tf.string:
    return image
  decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
  decoded.set_shape([None, None, 3])
  return decoded


def decode_and_crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """Crop `window` = [y, x, height, width] out of the image; fused with decoding for JPEG bytes."""
  if image.dtype != tf.string:
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

  def fused():
    return tf.io.decode_and_crop_jpeg(image, window, channels=3)

  def unfused():
    return tf.image.crop_to_bounding_box(decode(image), window[0], window[1], window[2], window[3])

  cropped = tf.cond(tf.io.is_jpeg(image), fused, unfused)
  cropped.set_shape([None, None, 3])
  return cropped


def center_crop_window(shape: tf.Tensor, crop_fraction: float) -> tf.Tensor:
  """The central square whose side is `crop_fraction` of the shorter side (flax examples/imagenet)."""
  height, width = shape[0], shape[1]
  side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def inception_crop_window(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random-resized-crop window [y, x, h, w]; the 0.875 centre crop when no attempt fits (flax fallback)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]), seed=seed,
      min_object_covered=CROP_MIN_OBJECT_COVERED, aspect_ratio_range=CROP_ASPECT_RANGE,
      area_range=CROP_AREA_RANGE, max_attempts=CROP_MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  # The op returns the whole image when all attempts fail; then fall back to a centre crop.
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  return tf.cond(failed, lambda: center_crop_window(shape, 0.875), lambda: window)


def resize(image: tf.Tensor, resolution: int, method: str, antialias: bool) -> tf.Tensor:
  """Resize to [resolution, resolution] float32 on the 0..255 scale (clipped: bicubic overshoots)."""
  image = tf.image.resize(image, [resolution, resolution], method=method, antialias=antialias)
  return tf.clip_by_value(image, 0.0, 255.0)


def pad_and_random_crop(image: tf.Tensor, pad: int, seed: tf.Tensor) -> tf.Tensor:
  """Zero-pad by `pad` pixels and crop back to the original size: random translations of <= pad px."""
  shape = tf.shape(image)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(padded, shape, seed=seed)


def normalize(image: tf.Tensor, normalization: str) -> tf.Tensor:
  """0..255 float -> the model's input scale."""
  if normalization == "imagenet":
    mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
    std = tf.constant(IMAGENET_STD, tf.float32) * 255.0
    return (image - mean) / std
  if normalization == "inception":
    return image / 127.5 - 1.0
  if normalization == "unit":
    return image / 255.0
  raise ValueError(f"config.dataset.normalization={normalization!r}: use one of {NORMALIZATIONS}.")


def train_image(image: tf.Tensor, seed: tf.Tensor, *, augment: str, resolution: int, method: str,
                antialias: bool, pad_pixels: int, normalization: str) -> tf.Tensor:
  """One training image: `augment` in inception_crop_flip | inception_crop | pad_crop_flip | pad_crop | none."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  if augment in ("inception_crop_flip", "inception_crop"):
    window = inception_crop_window(image_shape(image), crop_seed)
    image = resize(decode_and_crop(image, window), resolution, method, antialias)
    if augment == "inception_crop_flip":
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  elif augment in ("pad_crop_flip", "pad_crop"):
    image = pad_and_random_crop(decode(image), pad_pixels, crop_seed)
    image = resize(image, resolution, method, antialias)
    if augment == "pad_crop_flip":
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  elif augment == "none":
    image = resize(decode(image), resolution, method, antialias)
  else:
    raise ValueError(f"config.dataset.augment={augment!r}: use one of {AUGMENTATIONS}.")
  return normalize(image, normalization)


def eval_image(image: tf.Tensor, *, crop_fraction: float | None, resolution: int, method: str,
               antialias: bool, normalization: str) -> tf.Tensor:
  """One evaluation image: centre crop of `crop_fraction` (None: the whole image), then resize."""
  if crop_fraction is not None:
    image = decode_and_crop(image, center_crop_window(image_shape(image), crop_fraction))
  image = resize(decode(image), resolution, method, antialias)
  return normalize(image, normalization)
