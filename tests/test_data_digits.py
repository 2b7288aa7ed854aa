"""The embedded digits dataset through the TFDS/tf.data pipeline: sizes, fixed split, determinism, resume."""

import concurrent.futures
import os

import ml_collections
import numpy as np
import pytest

from mobilenet_jax import data

BATCH = 64


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  cfg = ml_collections.ConfigDict({"dataset": data.default_dataset_config(), "resolution": 32})
  cfg.dataset.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return cfg


def _batches(config, n, **kwargs):
  iterator = data.create_train_iterator(config, local_batch_size=BATCH, process_index=0, process_count=1,
                                        **kwargs)
  return [next(iterator) for _ in range(n)]


def test_import_is_light():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys, mobilenet_jax.data as d; d.default_dataset_config(); "
          "assert 'tensorflow' not in sys.modules, 'mobilenet_jax.data imported TensorFlow'")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_info_and_split_sizes(config):
  info = data.dataset_info(config)
  assert info == data.DatasetInfo(name="digits", num_classes=10, num_train_examples=1_437,
                                  num_eval_examples=360)
  assert info.num_train_examples + info.num_eval_examples == 1_797
  assert data.describe(config)["augment"] == "pad_crop"  # translations, never flips, for digits


def test_split_is_fixed_and_stratified(config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mobilenet_jax.data import digits  # pylint: disable=g-import-not-at-top
  first, second = digits.digits_arrays(), digits.digits_arrays()
  for split in ("train", "test"):
    np.testing.assert_array_equal(first[split][2], second[split][2])
  builder = tfds.builder("digits", data_dir=config.dataset.data_dir)
  for split, size in (("train", 1_437), ("test", 360)):
    examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert len(examples) == size
    assert examples[0]["image"].shape == (32, 32, 3) and examples[0]["image"].dtype == np.uint8
    by_index = {int(ex["sklearn_index"]): ex for ex in examples}
    images, labels, indices = first[split]
    assert sorted(by_index) == list(indices)  # the prepared split is the fixed one
    np.testing.assert_array_equal(by_index[int(indices[3])]["image"], images[3])
    assert by_index[int(indices[3])]["label"] == labels[3]
  counts = {s: np.bincount(first[s][1], minlength=10) / len(first[s][1]) for s in ("train", "test")}
  np.testing.assert_allclose(counts["train"], counts["test"], atol=0.01)  # stratified


def test_train_batches_shapes_and_determinism(config):
  run_a, run_b = _batches(config, 3, seed=0), _batches(config, 3, seed=0)
  other_seed = _batches(config, 1, seed=1)
  batch = run_a[0]
  assert batch["image"].shape == (BATCH, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
  assert set(np.unique(batch["label"])) <= set(range(10))
  for a, b in zip(run_a, run_b):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(run_a[0]["label"], other_seed[0]["label"])


@pytest.mark.parametrize("start_step", [7, 25])  # 22 steps per epoch: mid-epoch and next epoch
def test_start_step_resumes_the_same_stream(config, start_step):
  uninterrupted = _batches(config, start_step + 3, seed=5)
  resumed = _batches(config, 3, seed=5, start_step=start_step)
  for a, b in zip(uninterrupted[start_step:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_an_epoch_visits_every_example_once(config):
  from mobilenet_jax.data import digits  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())
  config.dataset.augment, config.dataset.normalization = "none", "unit"  # images come out as stored
  steps = 1_437 // BATCH
  seen = np.concatenate([b["image"] for b in _batches(config, steps, seed=0)])
  seen = np.round(seen * 255).astype(np.uint8)
  train_images = digits.digits_arrays()["train"][0]
  position = {image.tobytes(): i for i, image in enumerate(train_images)}
  assert len(position) == len(train_images)  # the digits images are all different
  visited = [position[image.tobytes()] for image in seen]  # KeyError: not a stored train image
  assert len(set(visited)) == steps * BATCH  # no example twice within an epoch
  assert visited != sorted(visited)  # shuffled


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_scores_every_example_once(config, process_count):
  batches_per_host, masked = [], 0
  for index in range(process_count):
    batches = list(data.create_eval_iterator(config, local_batch_size=BATCH, process_index=index,
                                             process_count=process_count))
    batches_per_host.append(len(batches))
    masked += sum(int(b["mask"].sum()) for b in batches)
    assert all(b["image"].shape == (BATCH, 32, 32, 3) and b["mask"].dtype == bool for b in batches)
  assert masked == 360
  assert len(set(batches_per_host)) == 1  # every host runs the same number of eval steps


def test_concurrent_preparation_is_safe(tmp_path):
  from mobilenet_jax.data import sources  # pylint: disable=g-import-not-at-top
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda _: sources.tfds_source("digits", str(tmp_path), True), range(2)))
  assert [r.num_examples("train") for r in results] == [1_437, 1_437]


def test_labels_match_images_and_eval_matches_train(config):
  """1-nearest-neighbour from un-augmented train batches to eval batches: >= 95% top-1 only if every
  label travels with its image and eval preprocessing equals train preprocessing (without augmentation)."""
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.dataset.augment = "none"
  train = _batches(plain, 1_437 // BATCH, seed=0)
  x = np.concatenate([b["image"] for b in train]).reshape(-1, 32 * 32 * 3)
  y = np.concatenate([b["label"] for b in train])
  evaluation = list(data.create_eval_iterator(config, local_batch_size=BATCH, process_index=0,
                                              process_count=1))
  mask = np.concatenate([b["mask"] for b in evaluation])
  x_eval = np.concatenate([b["image"] for b in evaluation]).reshape(-1, 32 * 32 * 3)[mask]
  y_eval = np.concatenate([b["label"] for b in evaluation])[mask]
  distances = (x_eval ** 2).sum(1)[:, None] - 2 * x_eval @ x.T + (x ** 2).sum(1)[None]
  assert (y[distances.argmin(1)] == y_eval).mean() >= 0.95


def test_tests_prepare_datasets_in_a_directory_of_their_own():
  """conftest.py: the default TFDS directory of this run is a fresh one, not ~/tensorflow_datasets."""
  from mobilenet_jax.data import sources  # pylint: disable=g-import-not-at-top
  directory = sources.default_data_dir()
  assert directory == os.environ["MOBILENET_JAX_TESTS_TFDS_DIR"]
  assert os.path.basename(directory).startswith("mobilenet_jax_tests_tfds_")
  assert os.path.realpath(directory) != os.path.realpath(os.path.expanduser("~/tensorflow_datasets"))
