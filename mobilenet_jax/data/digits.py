"""The embedded default dataset: scikit-learn's 8x8 handwritten digits as a real TFDS builder.

`sklearn.datasets.load_digits` ships 1,797 real 8x8 grey images (UCI "Optical Recognition of Handwritten
Digits", 16 grey levels, 10 classes) inside the scikit-learn wheel, so this dataset needs no download. The
builder writes them once into the TFDS data directory and from then on they are read by the very same
tfds/tf.data path as ImageNet or CIFAR.

Split (fixed, reproducible): a stratified split with `sklearn.model_selection.train_test_split(
stratify=labels, test_size=360, random_state=0)`: train 1,437, test 360 images, every class in both splits
in its proportion. Images: the 0..16 grey levels rescaled to 0..255, upscaled 8x8 -> 32x32 (bilinear, PIL)
and repeated to 3 channels (uint8 RGB), so any ImageNet-shaped model reads them.
"""

from __future__ import annotations

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1_437
NUM_TEST = 360
IMAGE_SIZE = 32
SPLIT_SEED = 0


def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The fixed split as numpy arrays: {split: (images uint8 [N,32,32,3], labels int64 [N], indices [N])}.

  `indices` are the positions in `sklearn.datasets.load_digits()`, so each example can be traced back.
  """
  from PIL import Image
  from sklearn import datasets, model_selection

  digits = datasets.load_digits()
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 16 grey levels -> 0..255
  upscaled = np.stack([
      np.asarray(Image.fromarray(g).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
      for g in grey])
  rgb = np.repeat(upscaled[..., None], 3, axis=-1)
  labels = digits.target.astype(np.int64)
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(labels)), test_size=NUM_TEST, stratify=labels, random_state=SPLIT_SEED)
  return {split: (rgb[idx], labels[idx], idx)
          for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx)))}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits as 32x32 RGB, fixed stratified split 1,437/360."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 32x32 RGB, stratified split (random_state=0)."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default looks the module up via the `importlib_resources` backport, which Python >= 3.9
    # installs do not necessarily have; this file's path is what it would find.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "sklearn_index": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        citation="Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten Digits. UCI.",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the arrays ship with scikit-learn.
    arrays = digits_arrays()
    return {split: self._generate_examples(*arrays[split]) for split in ("train", "test")}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
    for image, label, index in zip(images, labels, indices):
      yield int(index), {"image": image, "label": int(label), "sklearn_index": int(index)}
