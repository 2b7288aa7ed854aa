"""What every data source is: the `Source` interface, and the error for a dataset not yet prepared."""

from __future__ import annotations

import abc

import tensorflow as tf


class DatasetNotReadyError(FileNotFoundError):
  """The dataset exists but is not prepared and cannot be prepared automatically (manual download)."""


class Source(abc.ABC):
  """A dataset the pipeline can read: classes, split sizes and one host's examples in a fixed order."""

  name: str
  num_classes: int
  # What `augment="auto"` means here: "inception_crop_flip" (natural images) or "pad_crop".
  default_augment: str
  # (height, width, channels) when every image has that shape (digits, CIFAR), else None.
  image_shape: tuple[int, int, int] | None = None

  @abc.abstractmethod
  def eval_split(self) -> str:
    """The split to evaluate on when config.dataset.eval_split is None."""

  @abc.abstractmethod
  def num_examples(self, split: str, process_index: int = 0, process_count: int = 1) -> int:
    """Examples in host `process_index`'s share of `split` (even split, sizes differ by at most 1)."""

  @abc.abstractmethod
  def read(self, split: str, process_index: int, process_count: int) -> tf.data.Dataset:
    """Host `process_index`'s share of `split`: {"image", "label"} in the same order on every call."""
