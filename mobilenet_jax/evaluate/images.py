"""The images of a folder, their labels, and the arrays a network reads.

Labels come from the path relative to the folder:

- an image inside a class folder (`DIR/<class>/...`): the folder name is the class index when it is
  an integer, the ImageNet index when it is a WordNet id (`n01440764`, sorted-synset order of
  ImageNet-1k and TFDS), and otherwise the folder's position among the sorted class folders (as the
  `folder` dataset numbers classes);
- an image directly in DIR: the leading integer of its name (`042_n01644373_tree_frog.JPEG` -> 42);
- otherwise none (the image is predicted, not scored).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Iterator, Optional, Sequence

import numpy as np

from mobilenet_jax.data.eval_recipes import EvalRecipe
from mobilenet_jax.data.folder import IMAGE_EXTENSIONS, decode_image_file

LEADING_INTEGER = re.compile(r"(\d+)(?:[_\-. ]|$)")
WORDNET_ID = re.compile(r"n\d{8}")


@functools.lru_cache(maxsize=1)
def imagenet_wordnet_ids() -> dict[str, int]:
  """{'n01440764': 0, ...}: ImageNet-1k's 1000 classes in sorted-synset order (TFDS' list)."""
  import tensorflow_datasets as tfds

  path = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
  return {line.strip(): i for i, line in enumerate(path.read_text().split()) if line.strip()}


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
  """ImageNet-1k's 1000 class names in sorted-synset order ('tench, Tinca tinca', ...): package
  data, the TF-slim label list without its background line."""
  from importlib import resources

  text = resources.files("mobilenet_jax.data").joinpath("imagenet_class_names.txt").read_text()
  return text.splitlines()


def _folder_label(name: str, class_folders: Sequence[str]) -> int:
  if name.isdigit():
    return int(name)
  if WORDNET_ID.fullmatch(name):
    ids = imagenet_wordnet_ids()
    if name not in ids:
      raise ValueError(f"class folder {name} is a WordNet id outside ImageNet-1k's 1000 classes")
    return ids[name]
  return class_folders.index(name)


def list_images(root: str) -> tuple[list[str], list[Optional[int]]]:
  """Every image file under `root` (sorted), with its label or None; see the module docstring."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--images={root} is not a directory")
  class_folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  paths, labels = [], []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      if not name.lower().endswith(IMAGE_EXTENSIONS):
        continue
      path = os.path.join(folder, name)
      parts = os.path.relpath(path, root).split(os.sep)
      if len(parts) > 1:
        label = _folder_label(parts[0], class_folders)
      else:
        match = LEADING_INTEGER.match(name)
        label = int(match.group(1)) if match else None
      paths.append(path)
      labels.append(label)
  if not paths:
    raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return paths, labels


def prepared_batches(paths: Sequence[str], recipe: EvalRecipe, batch_size: int
                     ) -> Iterator[np.ndarray]:
  """float32 [B, R, R, 3] batches of the images prepared by `recipe` (the last may be smaller)."""
  import tensorflow as tf

  from mobilenet_jax.data.eval_recipes import prepare

  prepare_one = tf.function(lambda image: prepare(image, recipe), reduce_retracing=True,
                            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  for start in range(0, len(paths), batch_size):
    yield np.stack([prepare_one(decode_image_file(p)).numpy()
                    for p in paths[start:start + batch_size]])
