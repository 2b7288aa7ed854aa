"""Where examples come from: a TFDS builder (digits, ImageNet, any tfds name) or an image folder.

A source knows its classes, its split sizes (also per host), and reads one host's share of a split as a
`tf.data.Dataset` of `{"image": encoded bytes or uint8 [H, W, 3], "label": int64}` in a fixed order.
Shuffling, augmentation and batching happen in `pipeline.py`, the same for every source.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import functools
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax.data import digits  # noqa: F401  (registers the `digits` TFDS builder)
from mobilenet_jax.data import folder, preprocess
from mobilenet_jax.data.base import DatasetNotReadyError, Source  # noqa: F401  (re-exported)
from mobilenet_jax.data.config import NO_FLIP_DATASETS

# Files the user must download for the manual-download datasets we know by name (TFDS builders).
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}
DATA_DIR_HELP = ("config.dataset.data_dir (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets; "
                 "on the command line --config.dataset.data_dir=/path)")


def default_data_dir() -> str:
  """TFDS's default data directory: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


class TfdsSource(Source):
  """Any TFDS image-classification dataset: the first `Image` feature and the `ClassLabel` feature."""

  def __init__(self, builder: tfds.core.DatasetBuilder):
    self.builder = builder
    self.name = builder.name
    features = builder.info.features
    self.image_key = _feature_key(builder, tfds.features.Image, preferred="image", position=0)
    self.label_key = _feature_key(builder, tfds.features.ClassLabel, preferred="label", position=1)
    if features[self.image_key].np_dtype != np.uint8:
      raise ValueError(f"Dataset {self.name!r}: image feature {self.image_key!r} has dtype "
                       f"{features[self.image_key].np_dtype}; only uint8 images are supported.")
    self.num_classes = features[self.label_key].num_classes
    self.default_augment = "pad_crop" if self.name in NO_FLIP_DATASETS else "inception_crop_flip"
    shape = features[self.image_key].shape
    self.image_shape = tuple(shape) if None not in shape else None

  def eval_split(self) -> str:
    splits = self.builder.info.splits
    for name in ("validation", "test"):
      if name in splits:
        return name
    raise ValueError(f"Dataset {self.name!r} has no 'validation' or 'test' split (splits: "
                     f"{sorted(splits)}); set config.dataset.eval_split, e.g. 'train[90%:]'.")

  def _host_split(self, split: str, process_index: int, process_count: int):
    return tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)

  def num_examples(self, split: str, process_index: int = 0, process_count: int = 1) -> int:
    try:
      return self.builder.info.splits[self._host_split(split, process_index, process_count)].num_examples
    except (KeyError, ValueError) as e:
      raise ValueError(f"Dataset {self.name!r}: bad split {split!r} ({e}); available splits: "
                       f"{sorted(self.builder.info.splits)}. Set config.dataset.train_split / "
                       "eval_split (TFDS slicing such as 'train[:90%]' is allowed).") from None

  def read(self, split: str, process_index: int, process_count: int) -> tf.data.Dataset:
    ds = self.builder.as_dataset(
        split=self._host_split(split, process_index, process_count), shuffle_files=False,
        decoders={self.image_key: tfds.decode.SkipDecoding()},  # decode later, fused with the crop
        read_config=tfds.ReadConfig(try_autocache=False, skip_prefetch=True))
    image_key, label_key = self.image_key, self.label_key
    select = preprocess.graph_function(
        lambda ex: {"image": ex[image_key], "label": tf.cast(ex[label_key], tf.int64)})
    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)


def _feature_key(builder, feature_type, preferred: str, position: int) -> str:
  """The key of the dataset's feature of `feature_type` ("image"/"label" or the supervised keys first)."""
  features = builder.info.features
  candidates = [k for k, f in features.items() if isinstance(f, feature_type)]
  supervised = builder.info.supervised_keys
  if preferred in candidates:
    return preferred
  if isinstance(supervised, tuple) and len(supervised) == 2 and supervised[position] in candidates:
    return supervised[position]
  if len(candidates) == 1:
    return candidates[0]
  raise ValueError(
      f"Dataset {builder.name!r} is not an image-classification dataset this pipeline can read: it needs "
      f"exactly one {feature_type.__name__} feature (found {candidates or 'none'} in {list(features)}).")


@contextlib.contextmanager
def _prepare_lock(data_dir: str, name: str):
  """Serialise preparation of one dataset between processes sharing `data_dir` (an flock on a file)."""
  if "://" in data_dir:  # Cloud storage: no flock; TFDS still writes to a temporary dir and renames.
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name}.prepare.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _unknown_dataset_error(name: str) -> ValueError:
  known = sorted(set(tfds.list_builders(with_community_datasets=False)))
  close = difflib.get_close_matches(name, known + ["digits", "folder"], n=5, cutoff=0.6)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  return ValueError(
      f"Unknown dataset config.dataset.name={name!r}.{hint} Use 'digits' (embedded, no download), "
      "'folder' (your images: config.dataset.data_dir=/root with train/<class>/* and val/<class>/*), "
      "or a tensorflow-datasets name such as 'imagenet2012', 'cifar10', 'imagenette' "
      "(catalog: https://www.tensorflow.org/datasets/catalog/overview).")


def _manual_download_error(builder, data_dir: str) -> DatasetNotReadyError:
  manual_dir = os.path.join(data_dir, "downloads", "manual")
  files = MANUAL_FILES.get(builder.name)
  what = (f"the files {' and '.join(files)}" if files else "the files described below")
  instructions = (builder.MANUAL_DOWNLOAD_INSTRUCTIONS or "").strip()
  return DatasetNotReadyError(
      f"Dataset {builder.name!r} is not prepared in {data_dir} and needs a manual download: put {what} "
      f"into {manual_dir}/ and run again (the first run prepares it, which takes hours for ImageNet), "
      f"or point {DATA_DIR_HELP} at a directory that already holds a prepared "
      f"{builder.name}/{builder.version}.\nTFDS instructions: {instructions}")


def _manual_files_present(builder, data_dir: str) -> bool:
  manual_dir = os.path.join(data_dir, "downloads", "manual")
  files = MANUAL_FILES.get(builder.name)
  if files:
    return all(os.path.exists(os.path.join(manual_dir, f)) for f in files)
  return os.path.isdir(manual_dir) and bool(os.listdir(manual_dir))


def tfds_source(name: str, data_dir: str | None, download: bool) -> TfdsSource:
  """The TFDS source for `name`, prepared if needed and allowed; clear errors for what cannot be."""
  data_dir = data_dir or default_data_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown_dataset_error(name) from None
  if builder.is_prepared():
    return TfdsSource(builder)
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not _manual_files_present(builder, data_dir):
    raise _manual_download_error(builder, data_dir)
  if not download:
    raise DatasetNotReadyError(
        f"Dataset {name!r} is not prepared in {data_dir}. Set config.dataset.download=True to download "
        f"and prepare it, run `tfds build {name} --data_dir={data_dir}`, or set {DATA_DIR_HELP}.")
  with _prepare_lock(data_dir, name):
    builder = tfds.builder(name, data_dir=data_dir)  # Another process may have prepared it meanwhile.
    if not builder.is_prepared():
      builder.download_and_prepare()
  return TfdsSource(tfds.builder(name, data_dir=data_dir))


@functools.lru_cache(maxsize=16)
def get_source(name: str, data_dir: str | None, download: bool) -> Source:
  """The source for config.dataset.{name, data_dir, download} (cached: builders read metadata once)."""
  if name == "folder":
    return folder.FolderSource(data_dir)
  return tfds_source(name, data_dir, download)
