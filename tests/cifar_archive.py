"""A small real CIFAR-10 archive for tests: the first files of each class and split of the CIFAR-10
JPEG archive beside the project (`../shared/data/cifar10-jpeg.tar.gz`), re-packed at test time."""

from __future__ import annotations

import collections
import pathlib
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_subset(out: pathlib.Path, per_class: dict[str, int]) -> collections.Counter:
  """Writes `out` (.tar.gz) with `cifar10/{split}/<class>/*.jpg`, the first `per_class[split]` files
  of each class; returns how many of each (split, class) it kept. Skips the test without the data."""
  if not CIFAR_ARCHIVE.is_file():
    pytest.skip(f"the CIFAR-10 JPEG archive is not beside the project ({CIFAR_ARCHIVE})")
  kept = collections.Counter()
  with tarfile.open(CIFAR_ARCHIVE) as src, tarfile.open(out, "w:gz") as dst:
    for member in src:
      parts = pathlib.PurePosixPath(member.name).parts
      if member.isfile() and len(parts) == 4 and parts[1] in per_class:
        if kept[parts[1:3]] < per_class[parts[1]]:
          kept[parts[1:3]] += 1
          dst.addfile(member, src.extractfile(member))
      if sum(kept.values()) == sum(per_class.values()) * len(CLASSES):
        break
  return kept
