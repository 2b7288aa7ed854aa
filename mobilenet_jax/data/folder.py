"""Image-folder datasets (`config.dataset.name = "folder"`): your own images, one sub-folder per class.

    data_dir/
      train/<class_name>/*.jpg|jpeg|png|bmp|gif|webp
      val/<class_name>/...        (or validation/ or test/; the same class names)

`data_dir` may also be an archive of such a folder (`.tar.gz`, `.zip`, ...), extracted once into a cache
(`archive.py`). Classes are the sorted sub-folder names of `train/`. Files are decoded with Pillow inside tf.data, which
converts what can be converted to RGB (grey, grey+alpha, palette, RGBA/LA composited over white, CMYK
JPEGs, 16-bit grey) and fails with an error that names the file for what cannot (truncated or corrupt
files, unknown formats). `scan_folder` checks a whole folder up front.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from mobilenet_jax.data import archive, preprocess
from mobilenet_jax.data.base import DatasetNotReadyError, Source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
EVAL_SPLIT_NAMES = ("val", "validation", "test")
BAD_IMAGE_ADVICE = "Re-save it as an RGB JPEG/PNG or delete it."
BAD_IMAGE_MARKER = "cannot read image file "  # Finds our message inside TensorFlow errors.


class BadImageError(ValueError):
  """An image file that cannot be read as RGB; the message names the file."""


def decode_image_file(path: str | bytes) -> np.ndarray:
  """One image file -> uint8 [H, W, 3] RGB; BadImageError naming the file when that is impossible."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  path = path.decode() if isinstance(path, bytes) else path
  try:
    with Image.open(path) as image:
      image.load()  # Decodes now: truncated/corrupt files raise here, not later.
      return to_rgb(image)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImageError(f"{BAD_IMAGE_MARKER}{path}: {e}. {BAD_IMAGE_ADVICE}") from None


def to_rgb(image) -> np.ndarray:
  """A loaded PIL image in any common mode -> uint8 [H, W, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: keep the top 8 bits of 16.
    grey = np.asarray(image, dtype=np.int64)
    grey = np.clip(grey >> 8 if grey.max() > 255 else grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "PA"):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  if image.mode not in ("RGB", "L", "1", "CMYK", "YCbCr", "RGBA", "RGBX", "LAB", "HSV"):
    raise ValueError(f"unsupported image mode {image.mode!r}")
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def list_images(split_dir: str, class_names: list[str]) -> tuple[list[str], list[int]]:
  """Sorted (path, label) pairs of `split_dir/<class>/*` for the known classes."""
  paths, labels = [], []
  for label, class_name in enumerate(class_names):
    class_dir = os.path.join(split_dir, class_name)
    if not os.path.isdir(class_dir):
      continue
    for file_name in sorted(os.listdir(class_dir)):
      if file_name.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(class_dir, file_name))
        labels.append(label)
  return paths, labels


def even_slice(num: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of host `process_index` in an even split of `num` (tfds.even_splits: first hosts +1)."""
  base, extra = divmod(num, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


class FolderSource(Source):
  """`data_dir/{train,val|validation|test}/<class>/*` read with tf.data and Pillow."""

  def __init__(self, root: str | None):
    if not root:
      raise ValueError("config.dataset.name='folder' needs config.dataset.data_dir=/path/to/root holding "
                       "train/<class>/*.jpg and val/<class>/*.jpg (or test/), or an archive of it.")
    root = archive.folder_root(root)
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
      raise DatasetNotReadyError(
          f"Image folder {root} has no train/ sub-folder. Expected {root}/train/<class>/*.jpg and "
          f"{root}/val/<class>/*.jpg; set config.dataset.data_dir to such a folder.")
    self.root = root
    self.name = f"folder:{root}"
    self.class_names = sorted(d for d in os.listdir(train_dir)
                              if os.path.isdir(os.path.join(train_dir, d)))
    if not self.class_names:
      raise DatasetNotReadyError(f"{train_dir} has no class sub-folders (train/<class>/*.jpg).")
    self.num_classes = len(self.class_names)
    self.default_augment = "inception_crop_flip"
    self._files: dict[str, tuple[list[str], list[int]]] = {}

  def eval_split(self) -> str:
    for name in EVAL_SPLIT_NAMES:
      if os.path.isdir(os.path.join(self.root, name)):
        return name
    raise DatasetNotReadyError(
        f"Image folder {self.root} has no val/, validation/ or test/ sub-folder; add one or set "
        "config.dataset.eval_split to the name of the folder to evaluate on.")

  def files(self, split: str) -> tuple[list[str], list[int]]:
    if split not in self._files:
      split_dir = os.path.join(self.root, split)
      if not os.path.isdir(split_dir):
        raise DatasetNotReadyError(f"Split folder {split_dir} does not exist "
                                           "(config.dataset.train_split / eval_split name sub-folders).")
      paths, labels = list_images(split_dir, self.class_names)
      if not paths:
        raise DatasetNotReadyError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under "
                                           f"{split_dir}/<class>/.")
      self._files[split] = (paths, labels)
    return self._files[split]

  def num_examples(self, split: str, process_index: int = 0, process_count: int = 1) -> int:
    start, stop = even_slice(len(self.files(split)[0]), process_index, process_count)
    return stop - start

  def read(self, split: str, process_index: int, process_count: int) -> tf.data.Dataset:
    paths, labels = self.files(split)
    start, stop = even_slice(len(paths), process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices({"path": paths[start:stop],
                                             "label": np.asarray(labels[start:stop], np.int64)})

    @preprocess.graph_function
    def load(example):
      image = tf.numpy_function(decode_image_file, [example["path"]], tf.uint8, stateful=False)
      image.set_shape([None, None, 3])
      return {"image": image, "label": example["label"]}

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def scan_folder(root: str) -> list[str]:
  """Every file under `root` that cannot be read as RGB, as messages naming the file (empty: all good)."""
  problems = []
  source = FolderSource(root)
  for split in ("train",) + EVAL_SPLIT_NAMES:
    if os.path.isdir(os.path.join(root, split)):
      for path in source.files(split)[0]:
        try:
          decode_image_file(path)
        except BadImageError as e:
          problems.append(str(e))
  return problems
