"""The image-folder source on CIFAR-10's layout, read from an archive (a small subset of the real
CIFAR-10 JPEG archive beside the project, re-packed at test time), and configs/cifar10.py giving the
same batches through tfds `cifar10` and through the folder."""

import collections
import os
import pathlib
import sys

import pytest

from mobilenet_jax.data import archive, folder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar_archive import CLASSES  # noqa: E402
from cifar_archive import cifar_subset as write_cifar_subset  # noqa: E402

PER_CLASS = {"train": 3, "test": 2}


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
  """cifar10/{train,test}/<class>/*.jpg: the first PER_CLASS files of each class and split."""
  out = tmp_path_factory.mktemp("cifar") / "cifar10-subset.tar.gz"
  return out, write_cifar_subset(out, PER_CLASS)


def test_folder_source_reads_the_cifar10_archive(cifar_subset, tmp_path):
  path, kept = cifar_subset
  assert {name for _, name in kept} == set(CLASSES)
  source = folder.FolderSource(str(path))    # extracted into the (test session's) cache
  assert source.root.endswith(os.path.join("", "cifar10"))
  assert source.class_names == CLASSES and source.num_classes == 10
  assert source.eval_split() == "test"
  for split, per_class in PER_CLASS.items():
    paths, labels = source.files(split)
    assert source.num_examples(split) == 10 * per_class
    assert collections.Counter(labels) == {label: per_class for label in range(10)}
    for p, label in zip(paths, labels):   # labels come from the class folder
      assert pathlib.Path(p).parent.name == CLASSES[label]
    assert folder.decode_image_file(paths[0]).shape == (32, 32, 3)
  # A second source finds the extracted copy instead of extracting again; no scratch copy is left.
  first = archive.extracted_folder(str(path))
  assert archive.extracted_folder(str(path)) == first
  assert not [d for d in os.listdir(os.path.dirname(first)) if d.startswith(".cifar10-subset")]


# ------------------------------------------------------------------------------------------------
# configs/cifar10.py: tfds `cifar10` and the image folder give the same batches


def _tfds_cifar10_source(images, labels, tmp_path):
  """tfds's real `cifar10` builder (its features: 32x32x3 uint8 images, 10 classes, PNG-encoded
  records) serving `images` in place of the download this machine cannot make."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from mobilenet_jax.data import sources

  class Cifar10(sources.TfdsSource):
    def num_examples(self, split, process_index=0, process_count=1):
      return len(images[split])

    def read(self, split, process_index, process_count):
      encoded = [tf.io.encode_png(image).numpy() for image in images[split]]
      return tf.data.Dataset.from_tensor_slices({"image": encoded, "label": labels[split]})

  return Cifar10(tfds.builder("cifar10", data_dir=str(tmp_path / "tfds")))


def test_cifar10_config_gives_the_same_batches_from_tfds_and_the_folder(tmp_path, monkeypatch):
  import numpy as np
  from PIL import Image

  from mobilenet_jax.configs import cifar10
  from mobilenet_jax.data import pipeline, preprocess, sources

  rng = np.random.default_rng(0)
  images, labels = {}, {}
  for split, per_class in (("train", 4), ("test", 2)):
    images[split] = rng.integers(0, 256, (10 * per_class, 32, 32, 3), dtype=np.uint8)
    labels[split] = np.repeat(np.arange(10), per_class)
    for i, (image, label) in enumerate(zip(images[split], labels[split])):  # sorted like tfds's
      directory = tmp_path / "cifar10" / split / CLASSES[label]
      directory.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(directory / f"{i:05d}.png")   # lossless: the same pixels
  tfds_source = _tfds_cifar10_source(images, labels, tmp_path)
  assert tfds_source.num_classes == 10 and tfds_source.image_shape == (32, 32, 3)
  real_get_source = sources.get_source
  monkeypatch.setattr(sources, "get_source", lambda name, data_dir, download: (
      tfds_source if name == "cifar10" else real_get_source(name, data_dir, download)))

  via_tfds = cifar10.get_config()
  via_folder = cifar10.get_config()
  via_folder.dataset.name, via_folder.dataset.data_dir = "folder", str(tmp_path / "cifar10")

  def batches(config):
    train = pipeline.create_train_iterator(config, local_batch_size=8, seed=3,
                                           process_index=0, process_count=1)
    evaluation = pipeline.create_eval_iterator(config, local_batch_size=8, process_index=0,
                                               process_count=1)
    return [next(train) for _ in range(6)], list(evaluation)

  (train_a, eval_a), (train_b, eval_b) = batches(via_tfds), batches(via_folder)
  for a, b in zip(train_a + eval_a, train_b + eval_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])

  # Eval: every test image once, whole (no crop or resize), normalised with ImageNet's mean/std.
  mean, std = 255 * np.array(preprocess.IMAGENET_MEAN), 255 * np.array(preprocess.IMAGENET_STD)
  seen = np.concatenate([b["image"][b["mask"]] for b in eval_a])
  np.testing.assert_allclose(seen * std + mean, images["test"], atol=1e-3)
  # Train: the CIFAR augmentation, a translation of at most 4 pixels (zero padding) and a
  # horizontal flip, of one of the training images of the batch's label.
  flips = set()
  for batch in train_a:
    for image, label in zip(batch["image"] * std + mean, batch["label"]):
      padded = np.pad(images["train"][labels["train"] == label], ((0, 0), (4, 4), (4, 4), (0, 0)))
      found = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.abs((image[:, ::-1] if flip else image)
                         - padded[:, dy:dy + 32, dx:dx + 32]).max(axis=(1, 2, 3)).min() < 1e-2]
      assert found, "a training image is not a shifted/flipped training image of its class"
      flips.add(found[0][2])
  assert flips == {False, True}
