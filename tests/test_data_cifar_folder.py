"""The image-folder source on CIFAR-10's layout, read from an archive (a small subset of the real
CIFAR-10 JPEG archive beside the project, re-packed at test time)."""

import collections
import os
import pathlib
import tarfile

import pytest

from mobilenet_jax.data import archive, folder

CIFAR_ARCHIVE = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 3, "test": 2}


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
  """cifar10/{train,test}/<class>/*.jpg: the first PER_CLASS files of each class and split."""
  if not CIFAR_ARCHIVE.is_file():
    pytest.skip(f"the CIFAR-10 JPEG archive is not beside the project ({CIFAR_ARCHIVE})")
  out = tmp_path_factory.mktemp("cifar") / "cifar10-subset.tar.gz"
  kept = collections.Counter()
  with tarfile.open(CIFAR_ARCHIVE) as src, tarfile.open(out, "w:gz") as dst:
    for member in src:
      parts = pathlib.PurePosixPath(member.name).parts
      if member.isfile() and len(parts) == 4 and parts[1] in PER_CLASS:
        key = parts[1:3]
        if kept[key] < PER_CLASS[parts[1]]:
          kept[key] += 1
          dst.addfile(member, src.extractfile(member))
      if sum(kept.values()) == sum(PER_CLASS.values()) * len(CLASSES):
        break
  return out, kept


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
