"""Train and eval iterators over any source: deterministic, resumable, host-sharded.

Train (per host): the host's share of the split (`tfds.split_for_jax_process`), optionally cached, is
shuffled once per epoch with a seed derived from (seed, epoch); each example gets a position
`(epoch, index in epoch)` and its augmentation seed is folded from (seed, process, epoch, index), so the
stream is a pure function of the seed. `start_step=k` skips the first `k * local_batch_size` examples
*before* decoding (whole epochs are not even read), which resumes bit-exactly and cheaply.

Eval (per host): big_vision's padding trick (`big_vision/input_pipeline.py`): every host appends padding
examples with `mask=False` and yields `ceil(max host examples / batch)` batches, so all hosts run the same
number of steps and the masked sum covers every example of the split exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax.data import config as data_config
from mobilenet_jax.data import folder, preprocess, sources
from mobilenet_jax.data.config import AUGMENTATIONS, NORMALIZATIONS, RESIZE_METHODS
from mobilenet_jax.data.info import DatasetInfo

# The pipeline only feeds the accelerator: keep TensorFlow off GPUs/TPUs (flax examples do the same).
tf.config.set_visible_devices([], "GPU")

_NUM_EPOCHS_MAX = 2**40  # "infinite": the train stream never ends.
_LARGE_CACHE = 300_000  # examples; caching more is probably a mistake (RAM), so warn.
_DECODED_CACHE_BYTES = 2 * 2**30  # small fixed-shape datasets are cached decoded


def _source(config) -> sources.Source:
  ds = config.dataset
  return sources.get_source(ds.name, ds.get("data_dir"), bool(ds.get("download", True)))


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  return process_index, process_count


def _eval_split(config, source: sources.Source) -> str:
  return config.dataset.get("eval_split") or source.eval_split()


def _augment(config, source: sources.Source) -> str:
  augment = config.dataset.get("augment", "auto")
  return source.default_augment if augment == "auto" else augment


def dataset_info(config) -> DatasetInfo:
  """Name, classes and split sizes of config.dataset (prepares the embedded digits on first use).

  Raises a clear error for an unknown dataset name, a dataset that needs a manual download (ImageNet), a
  bad split or a bad image folder: call it before compiling anything.
  """
  dc = config.dataset
  if not isinstance(config.get("resolution"), int) or config.resolution < 1:
    raise ValueError(f"config.resolution={config.get('resolution')!r} must be a positive int (pixels).")
  if dc.get("augment", "auto") not in AUGMENTATIONS:
    raise ValueError(f"config.dataset.augment={dc.augment!r}: use one of {AUGMENTATIONS}.")
  if data_config.normalization(dc) not in NORMALIZATIONS:
    raise ValueError(f"config.dataset.normalization={dc.normalization!r}: use one of {NORMALIZATIONS}.")
  if dc.get("resize_method", "bilinear") not in RESIZE_METHODS:
    raise ValueError(f"config.dataset.resize_method={dc.resize_method!r}: use one of {RESIZE_METHODS}.")
  source = _source(config)
  return DatasetInfo(name=source.name, num_classes=source.num_classes,
                     num_train_examples=source.num_examples(config.dataset.train_split),
                     num_eval_examples=source.num_examples(_eval_split(config, source)))


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.inject_prefetch = False  # big_vision: avoids hidden RAM use.
  return options


def _records(source: sources.Source, split: str, process_index: int, process_count: int,
             cache: bool) -> tf.data.Dataset:
  """The host's examples; cached in memory if asked (decoded when that takes <= 2 GiB: digits, CIFAR)."""
  ds = source.read(split, process_index, process_count)
  if not cache:
    return ds
  num_examples = source.num_examples(split, process_index, process_count)
  if source.image_shape and num_examples * math.prod(source.image_shape) <= _DECODED_CACHE_BYTES:
    decode = preprocess.graph_function(lambda ex: {**ex, "image": preprocess.decode(ex["image"])})
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  elif num_examples > _LARGE_CACHE:
    tf.get_logger().warning("config.dataset.cache=True on %s (%s, %d examples): this needs a lot of "
                            "RAM; set config.dataset.cache=False for ImageNet-sized data.",
                            source.name, split, num_examples)
  return ds.cache()


def _numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """tf.data -> numpy batches; unreadable image files surface as folder.BadImageError naming the file."""
  iterator = iter(tfds.as_numpy(ds))
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      if folder.BAD_IMAGE_MARKER in e.message:
        start = e.message.index(folder.BAD_IMAGE_MARKER)
        end = e.message.index(folder.BAD_IMAGE_ADVICE, start) + len(folder.BAD_IMAGE_ADVICE)
        raise folder.BadImageError(e.message[start:end]) from None
      raise
    yield batch


def create_train_iterator(config, *, local_batch_size: int, seed: int, start_step: int = 0,
                          process_index: int | None = None, process_count: int | None = None
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of this host's train batches {"image": f32 [B,R,R,3], "label": i32 [B]}.

  Deterministic given `seed`; `start_step=k` yields exactly what an uninterrupted iterator yields from
  step k on. B = local_batch_size, R = config.resolution.
  """
  process_index, process_count = _processes(process_index, process_count)
  source = _source(config)
  dc = config.dataset
  split = dc.train_split
  num_examples = source.num_examples(split, process_index, process_count)
  if num_examples < local_batch_size:
    raise ValueError(f"local_batch_size={local_batch_size} exceeds this host's {num_examples} examples "
                     f"of {source.name} {split}; lower the batch size.")
  records = _records(source, split, process_index, process_count, dc.get("cache", True))
  first_epoch, offset = divmod(start_step * local_batch_size, num_examples)
  buffer_size = max(1, min(int(dc.get("shuffle_buffer", 16_384)), num_examples))
  seed_pair = tf.constant([seed, process_index], tf.int64)

  def one_epoch(epoch):
    epoch_seed = tf.random.experimental.stateless_fold_in(seed_pair, epoch)
    shuffle_seed = tf.random.stateless_uniform([], epoch_seed, minval=None, maxval=None, dtype=tf.int64)
    shuffled = records.shuffle(buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False)
    with_seed = preprocess.graph_function(lambda index, ex: (epoch_seed, index, ex))
    return shuffled.enumerate().map(with_seed)

  ds = tf.data.Dataset.range(first_epoch, _NUM_EPOCHS_MAX).flat_map(
      preprocess.graph_function(one_epoch))
  ds = ds.skip(offset)  # Before decoding: resuming mid-epoch only reads the skipped records.

  train_image = functools.partial(
      preprocess.train_image, augment=_augment(config, source), resolution=config.resolution,
      method=dc.get("resize_method", "bilinear"), antialias=dc.get("antialias", True),
      pad_pixels=dc.get("pad_pixels", 4), normalization=data_config.normalization(dc))

  def prepare(epoch_seed, index, ex):
    example_seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
    return {"image": train_image(ex["image"], example_seed), "label": tf.cast(ex["label"], tf.int32)}

  ds = ds.map(preprocess.graph_function(prepare), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(dc.get("prefetch", 2))
  return _numpy_batches(ds.with_options(_options()))


def _eval_dataset(config, local_batch_size: int, process_index: int, process_count: int
                  ) -> tf.data.Dataset:
  source = _source(config)
  dc = config.dataset
  split = _eval_split(config, source)
  host_sizes = [source.num_examples(split, i, process_count) for i in range(process_count)]
  num_batches = math.ceil(max(host_sizes) / local_batch_size)
  augment = _augment(config, source)
  natural = augment.startswith("inception_crop")
  eval_image = functools.partial(
      preprocess.eval_image, crop_fraction=dc.get("crop_fraction", 0.875) if natural else None,
      resolution=config.resolution, method=dc.get("resize_method", "bilinear"),
      antialias=dc.get("antialias", True), normalization=data_config.normalization(dc))

  def prepare(ex):
    return {"image": eval_image(ex["image"]), "label": tf.cast(ex["label"], tf.int32),
            "mask": tf.constant(True)}

  ds = _records(source, split, process_index, process_count, dc.get("cache", True))
  ds = ds.map(preprocess.graph_function(prepare), num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros([config.resolution, config.resolution, 3], tf.float32),
      "label": tf.constant(0, tf.int32), "mask": tf.constant(False)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch_size)
  ds = ds.batch(local_batch_size).prefetch(dc.get("prefetch", 2))
  return ds.with_options(_options())


@functools.lru_cache(maxsize=8)
def _cached_eval_dataset(config_json: str, resolution: int, local_batch_size: int, process_index: int,
                         process_count: int) -> tf.data.Dataset:
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"dataset": json.loads(config_json), "resolution": resolution})
  return _eval_dataset(config, local_batch_size, process_index, process_count)


def create_eval_iterator(config, *, local_batch_size: int, process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Finite iterator of this host's eval batches {"image", "label", "mask": bool [B]}.

  Every host yields the same number of batches; padding examples have mask False, so summing
  `mask`-weighted metrics over all hosts counts each example of the eval split exactly once.
  The tf.data pipeline is built once per configuration and reused (its cache too) on later calls.
  """
  process_index, process_count = _processes(process_index, process_count)
  dataset_json = json.dumps(config.dataset.to_dict(), sort_keys=True)
  ds = _cached_eval_dataset(dataset_json, int(config.resolution), local_batch_size, process_index,
                            process_count)
  return _numpy_batches(ds)


def describe(config) -> dict[str, object]:
  """The resolved pipeline choices, for logs: sizes, augmentation, eval split and eval crop."""
  source = _source(config)
  augment = _augment(config, source)
  return {**dataclasses.asdict(dataset_info(config)), "augment": augment,
          "eval_split": _eval_split(config, source),
          "eval_crop_fraction": config.dataset.crop_fraction if augment.startswith("inception") else None}
