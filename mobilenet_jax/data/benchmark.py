"""Input-pipeline throughput (images/s on this host), without a model: is training input-bound?

    python -m mobilenet_jax.data.benchmark                          # digits, 32x32, batch 64
    python -m mobilenet_jax.data.benchmark --dataset=imagenet2012 --resolution=224 --batch=128 \
        --data_dir=/path/to/tensorflow_datasets
    python -m mobilenet_jax.data.benchmark --synthetic_jpeg=500x375 --resolution=224 --batch=128
    python -m mobilenet_jax.data.benchmark --dataset=folder --data_dir=cifar10-jpeg.tar.gz \
        --augment=pad_crop_flip --resolution=112 --epochs=2     # configs/finetune.py's input

`--synthetic_jpeg=WxH` times the ImageNet train/eval preprocessing (fused JPEG decode + Inception crop +
resize + flip, or centre crop) on one in-memory JPEG of that size (ImageNet's average is about 400x350),
so the decode cost is measured without the dataset.
"""

from __future__ import annotations

import argparse
import functools
import time

import ml_collections
import numpy as np

from mobilenet_jax.data import config as data_config


def _time(iterator, steps: int, batch: int) -> float:
  next(iterator)  # warm-up: builds the pipeline, fills caches and prefetch buffers
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps * batch / (time.perf_counter() - start)


def _synthetic_jpeg_iterators(width: int, height: int, config, batch: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mobilenet_jax.data import preprocess  # pylint: disable=g-import-not-at-top

  y, x = np.mgrid[0:height, 0:width]
  image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
  jpeg = tf.io.encode_jpeg(image, quality=90)
  dc = config.dataset
  common = dict(resolution=config.resolution, method=dc.resize_method, antialias=dc.antialias,
                normalization=data_config.normalization(dc))
  train = functools.partial(preprocess.train_image, augment="inception_crop_flip",
                            pad_pixels=dc.pad_pixels, **common)
  evaluate = functools.partial(preprocess.eval_image, crop_fraction=dc.crop_fraction, **common)
  base = tf.data.Dataset.from_tensors(jpeg).repeat()
  train_one = preprocess.graph_function(
      lambda i, b: train(b, tf.stack([tf.constant(0, tf.int64), i])))
  train_ds = base.enumerate().map(train_one, num_parallel_calls=tf.data.AUTOTUNE)
  eval_ds = base.map(preprocess.graph_function(evaluate), num_parallel_calls=tf.data.AUTOTUNE)
  return (iter(ds.batch(batch).prefetch(2).as_numpy_iterator()) for ds in (train_ds, eval_ds))


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--synthetic_jpeg", default=None, help="WxH: time ImageNet preprocessing only")
  parser.add_argument("--augment", default="auto", help="config.dataset.augment (e.g. pad_crop_flip, "
                      "configs/finetune.py's)")
  parser.add_argument("--epochs", type=float, default=0.0, help="time this many epochs of the train "
                      "split instead of --steps (the first decodes and caches, later ones read the cache)")
  args = parser.parse_args(argv)

  from mobilenet_jax import data  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"dataset": data.default_dataset_config(),
                                      "resolution": args.resolution})
  config.dataset.update(name=args.dataset, data_dir=args.data_dir, augment=args.augment)
  if args.synthetic_jpeg:
    width, height = (int(v) for v in args.synthetic_jpeg.lower().split("x"))
    train, evaluate = _synthetic_jpeg_iterators(width, height, config, args.batch)
    label = f"synthetic {width}x{height} JPEG"
  else:
    train = data.create_train_iterator(config, local_batch_size=args.batch, seed=0, process_index=0,
                                       process_count=1)
    evaluate = iter(())
    label = args.dataset

  if args.epochs > 0:
    per_epoch = data.dataset_info(config).num_train_examples // args.batch
    results = {}
    for epoch in range(int(np.ceil(args.epochs))):
      key = f"train_images_per_s(epoch {epoch + 1})"
      results[key] = _time(train, per_epoch - (epoch == 0), args.batch)
  else:
    results = {"train_images_per_s": _time(train, args.steps, args.batch)}
  if args.synthetic_jpeg:
    results["eval_images_per_s"] = _time(evaluate, args.steps, args.batch)
  else:
    for name in ("eval_images_per_s(first pass, builds the pipeline)", "eval_images_per_s(second pass)"):
      start, count = time.perf_counter(), 0
      for batch in data.create_eval_iterator(config, local_batch_size=args.batch, process_index=0,
                                             process_count=1):
        count += int(batch["mask"].sum())
      results[name] = count / (time.perf_counter() - start)
  for key, value in results.items():
    print(f"{label} @ {args.resolution}px, batch {args.batch}: {key} = {value:,.0f}")
  return results


if __name__ == "__main__":
  main()
