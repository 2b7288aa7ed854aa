"""ImageNet and other TFDS datasets: the pipeline end to end under `tfds.testing.mock_data`, eval padding
over simulated hosts, preprocessing ops, and the errors for missing or unknown datasets.

The fake imagenet2012 has real metadata (split sizes written at test time, as `tfds.testing.mock_data` reads them) and
examples whose label is their index in the split, so host shares can be checked for overlap.
"""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax import data
from mobilenet_jax.data import preprocess, sources

SPLIT_SIZES = {"train": 50, "validation": 37}  # 37: not a multiple of any batch size used below
RESOLUTION = 32
IMAGENET_RANGE = ((0 - 0.485) / 0.229, (1 - 0.406) / 0.225)  # normalised 0..255 pixels


def _write_metadata(name: str, data_dir: str, split_sizes: dict[str, int]) -> None:
  """What `tfds.testing.mock_data` needs to know the splits: dataset_info.json with one shard per split."""
  builder = tfds.builder(name, data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=name,
                                           filetype_suffix="tfrecord", split="train")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0,
                          filename_template=template.replace(split=split))
      for split, size in split_sizes.items()]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


def _fake_imagenet_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
  """Stands in for `builder._as_dataset`: JPEGs of varied shapes, label = index in the split."""
  del read_config, shuffle_files
  indices = tf.data.Dataset.range(0)
  for instruction in self.info.splits[split].file_instructions:  # respects slicing and even splits
    indices = indices.concatenate(
        tf.data.Dataset.range(instruction.skip, instruction.skip + instruction.take))

  def example(index):
    height, width = 40 + (index % 5) * 8, 64 - (index % 3) * 8
    ramp = tf.cast(tf.range(width) * 255 // width, tf.uint8)  # left-right ramp: flips are visible
    image = tf.broadcast_to(ramp[None, :, None], tf.stack([height, width, 3]))
    return {"image": tf.io.encode_jpeg(image), "label": index, "file_name": tf.strings.as_string(index)}

  return indices.map(example).map(lambda ex: self.info.features.decode_example(ex, decoders=decoders))


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  _write_metadata("imagenet2012", data_dir, SPLIT_SIZES)
  return data_dir


@pytest.fixture
def imagenet(imagenet_dir):
  """The fake imagenet2012 config; TFDS is mocked only while the test runs."""
  config = ml_collections.ConfigDict({"dataset": data.default_dataset_config(), "resolution": RESOLUTION})
  config.dataset.update(name="imagenet2012", data_dir=imagenet_dir, cache=False, resize_method="bicubic")
  with tfds.testing.mock_data(data_dir=imagenet_dir, as_dataset_fn=_fake_imagenet_as_dataset):
    yield config


def _eval(config, batch, index=0, count=1):
  return list(data.create_eval_iterator(config, local_batch_size=batch, process_index=index,
                                        process_count=count))


def test_imagenet_info_and_defaults(imagenet):
  assert data.dataset_info(imagenet) == data.DatasetInfo("imagenet2012", 1000, 50, 37)
  described = data.describe(imagenet)
  assert described["augment"] == "inception_crop_flip" and described["eval_split"] == "validation"
  assert described["eval_crop_fraction"] == 0.875


def test_imagenet_train_batches(imagenet):
  iterator = data.create_train_iterator(imagenet, local_batch_size=8, seed=0, process_index=0,
                                        process_count=1)
  batches = [next(iterator) for _ in range(8)]  # 64 > 50 examples: crosses into the second epoch
  images = np.stack([b["image"] for b in batches])
  assert images.shape == (8, 8, RESOLUTION, RESOLUTION, 3) and images.dtype == np.float32
  assert batches[0]["label"].dtype == np.int32
  assert IMAGENET_RANGE[0] - 1e-5 <= images.min() and images.max() <= IMAGENET_RANGE[1] + 1e-5
  first_epoch = np.concatenate([b["label"] for b in batches])[:50]
  assert sorted(first_epoch) == list(range(50))  # shuffled, each example once per epoch
  # The ramp runs left to right in every stored image; random flips reverse it in about half.
  slope = images[..., :, -1, 0].mean(-1) - images[..., :, 0, 0].mean(-1)
  assert (slope > 0).any() and (slope < 0).any()


def test_imagenet_eval_batches(imagenet):
  batches = _eval(imagenet, 8)
  images = np.stack([b["image"] for b in batches])
  assert images.shape == (5, 8, RESOLUTION, RESOLUTION, 3) and images.dtype == np.float32
  assert IMAGENET_RANGE[0] - 1e-5 <= images.min() and images.max() <= IMAGENET_RANGE[1] + 1e-5
  # Eval is deterministic: centre crop of the ramp, which stays left-to-right.
  np.testing.assert_array_equal(images, np.stack([b["image"] for b in _eval(imagenet, 8)]))
  assert (images[..., -1, 0].mean(-1) > images[..., 0, 0].mean(-1))[np.stack([b["mask"] for b in batches])].all()


def test_imagenet_hosts_get_disjoint_halves(imagenet):
  halves = []
  for index in range(2):
    iterator = data.create_train_iterator(imagenet, local_batch_size=5, seed=0, process_index=index,
                                          process_count=2)
    halves.append(set(np.concatenate([next(iterator)["label"] for _ in range(5)])))  # one epoch each
  assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == set(range(50))
  assert len(halves[0]) == len(halves[1]) == 25


@pytest.mark.parametrize("process_count,batch", [(1, 8), (2, 8), (3, 5), (4, 16)])
def test_eval_scores_every_example_exactly_once(imagenet, process_count, batch):
  labels, batches_per_host = [], []
  for index in range(process_count):
    batches = _eval(imagenet, batch, index, process_count)
    batches_per_host.append(len(batches))
    for b in batches:
      assert b["image"].shape[0] == batch and b["mask"].dtype == bool
      labels.extend(b["label"][b["mask"]])
  assert sorted(labels) == list(range(SPLIT_SIZES["validation"]))  # sum(mask) == 37, no repeats
  assert len(set(batches_per_host)) == 1


def test_inception_crop_window_statistics():
  shape = tf.constant([120, 160, 3])
  windows = np.stack([preprocess.inception_crop_window(shape, tf.constant([0, i])).numpy()
                      for i in range(100)])
  y, x, h, w = windows.T
  assert (y >= 0).all() and (x >= 0).all() and (y + h <= 120).all() and (x + w <= 160).all()
  area = h * w / (120 * 160)
  assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
  assert ((w / h) >= 0.75 * 0.9).all() and ((w / h) <= 4 / 3 * 1.1).all()  # integer rounding
  assert len({tuple(v) for v in windows}) > 90  # really random


def test_fused_decode_and_crop_equals_decode_then_crop():
  image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
  jpeg, png = tf.io.encode_jpeg(image), tf.io.encode_png(image)
  window = tf.constant([5, 9, 40, 50])
  decoded = tf.io.decode_jpeg(jpeg).numpy()[5:45, 9:59]
  np.testing.assert_array_equal(preprocess.decode_and_crop(jpeg, window).numpy(), decoded)
  np.testing.assert_array_equal(preprocess.decode_and_crop(png, window).numpy(), image[5:45, 9:59])
  np.testing.assert_array_equal(preprocess.image_shape(jpeg).numpy(), [60, 80, 3])


def test_pad_crop_only_translates():
  image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
  shifts = set()
  for i in range(20):
    out = preprocess.pad_and_random_crop(tf.constant(image), 4, tf.constant([i, 0])).numpy()
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(out, padded[dy:dy + 32, dx:dx + 32])]
    assert len(matches) == 1  # a translation of <= 4 px (no flip, no scaling)
    shifts.add(matches[0])
  assert len(shifts) > 10


@pytest.mark.parametrize("name,expected", [("inception", (-1.0, 1.0)), ("unit", (0.0, 1.0)),
                                           ("imagenet", IMAGENET_RANGE)])
def test_normalizations(name, expected):
  out = preprocess.normalize(tf.constant([[0.0] * 3, [255.0] * 3]), name).numpy()
  np.testing.assert_allclose(out[0].min(), expected[0], rtol=1e-6)
  np.testing.assert_allclose(out[1].max(), expected[1], rtol=1e-6)


@pytest.mark.parametrize("name,image_key,label_key,num_classes,augment", [
    ("cifar10", "image", "label", 10, "inception_crop_flip"),
    ("oxford_iiit_pet", "image", "label", 37, "inception_crop_flip"),  # also has a mask Image feature
    ("smallnorb", "image", "label_category", 5, "inception_crop_flip"),  # several ClassLabels
    ("mnist", "image", "label", 10, "pad_crop"),  # digits are never flipped
])
def test_any_tfds_dataset_keys_from_builder_info(tmp_path, name, image_key, label_key, num_classes,
                                                 augment):
  source = sources.TfdsSource(tfds.builder(name, data_dir=str(tmp_path)))
  assert (source.image_key, source.label_key, source.num_classes, source.default_augment) == (
      image_key, label_key, num_classes, augment)


def test_non_classification_dataset_is_refused(tmp_path):
  with pytest.raises(ValueError, match="not an image-classification dataset"):
    sources.TfdsSource(tfds.builder("coco", data_dir=str(tmp_path)))


def test_cifar10_by_name_under_mock(tmp_path):
  _write_metadata("cifar10", str(tmp_path), {"train": 50_000, "test": 10_000})
  config = ml_collections.ConfigDict({"dataset": data.default_dataset_config(), "resolution": 24})
  config.dataset.update(name="cifar10", data_dir=str(tmp_path), augment="pad_crop_flip")
  with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
    assert data.dataset_info(config) == data.DatasetInfo("cifar10", 10, 50_000, 10_000)
    batch = next(data.create_train_iterator(config, local_batch_size=8, seed=0, process_index=0,
                                            process_count=1))
  assert batch["image"].shape == (8, 24, 24, 3) and np.isfinite(batch["image"]).all()


def test_imagenet_without_manual_files_says_where_to_put_them(tmp_path):
  config = ml_collections.ConfigDict({"dataset": data.default_dataset_config(), "resolution": 224})
  config.dataset.update(name="imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(sources.DatasetNotReadyError) as error:
    data.dataset_info(config)
  message = str(error.value)
  assert os.path.join(str(tmp_path), "downloads", "manual") in message
  assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
  assert "config.dataset.data_dir" in message


@pytest.mark.parametrize("name", ["imagenet2013", "no_such_dataset_xyz"])
def test_unknown_dataset_name(tmp_path, name):
  config = ml_collections.ConfigDict({"dataset": data.default_dataset_config(), "resolution": 32})
  config.dataset.update(name=name, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="Unknown dataset config.dataset.name") as error:
    data.dataset_info(config)
  assert "'digits'" in str(error.value) and "'folder'" in str(error.value)


def test_bad_options_fail_before_training(imagenet):
  config = ml_collections.ConfigDict(imagenet.to_dict())
  for field, value in (("augment", "mixup"), ("normalization", "zscore"), ("resize_method", "cubic")):
    bad = ml_collections.ConfigDict(config.to_dict())
    bad.dataset[field] = value
    with pytest.raises(ValueError, match=f"config.dataset.{field}"):
      data.dataset_info(bad)
  config.dataset.train_split = "training"
  with pytest.raises(ValueError, match="bad split 'training'"):
    data.dataset_info(config)
  config.dataset.train_split, config.resolution = "train", 0
  with pytest.raises(ValueError, match="config.resolution"):
    data.dataset_info(config)
