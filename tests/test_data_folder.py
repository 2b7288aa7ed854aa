"""Image-folder datasets and bad data: grey, RGBA and CMYK files become RGB, truncated files fail naming
the file (fixtures are written with Pillow at test time)."""

import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mobilenet_jax import data
from mobilenet_jax.data import folder

RNG = np.random.default_rng(0)
_Y, _X = np.mgrid[0:24, 0:36]
RGB = np.stack([_X * 7, _Y * 10, 255 - _X * 3 - _Y * 4], -1).astype(np.uint8)  # smooth: JPEG-friendly
GREY = RNG.integers(0, 256, (24, 36), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (24, 36, 1), dtype=np.uint8)


def _write(path: str, image: Image.Image, **save_options) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **save_options)
  return path


def _odd_files(root: str, split: str) -> dict[str, str]:
  """The convertible odd files of the issue: grey PNG, RGBA PNG, CMYK JPEG (+ a plain RGB JPEG)."""
  return {
      "grey": _write(f"{root}/{split}/cat/grey.png", Image.fromarray(GREY, "L")),
      "rgba": _write(f"{root}/{split}/cat/rgba.png",
                     Image.fromarray(np.concatenate([RGB, ALPHA], -1), "RGBA")),
      "cmyk": _write(f"{root}/{split}/dog/cmyk.jpg", Image.fromarray(RGB).convert("CMYK"),
                     format="JPEG", quality=95),
      "rgb": _write(f"{root}/{split}/dog/rgb.jpg", Image.fromarray(RGB), format="JPEG", quality=95),
  }


def _truncated_jpeg(path: str) -> str:
  buffer = io.BytesIO()
  Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
  return path


def _config(root: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({"dataset": data.default_dataset_config(), "resolution": 16})
  config.dataset.update(name="folder", data_dir=root)
  return config


def test_odd_files_decode_to_rgb(tmp_path):
  files = _odd_files(str(tmp_path), "train")
  decoded = {kind: folder.decode_image_file(path) for kind, path in files.items()}
  for image in decoded.values():
    assert image.shape == (24, 36, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(decoded["grey"], np.repeat(GREY[..., None], 3, -1))
  alpha = ALPHA / 255.0  # RGBA is composited over white
  np.testing.assert_allclose(decoded["rgba"], RGB * alpha + 255 * (1 - alpha), atol=1)
  # CMYK JPEG: same colours as the RGB original up to JPEG loss (colour inversion would be ~128 off).
  assert np.abs(decoded["cmyk"].astype(int) - RGB).mean() < 4
  assert np.abs(decoded["rgb"].astype(int) - RGB).mean() < 4


def test_folder_dataset_end_to_end(tmp_path):
  root = str(tmp_path)
  for split in ("train", "val"):
    _odd_files(root, split)
  config = _config(root)
  assert data.dataset_info(config) == data.DatasetInfo(f"folder:{root}", 2, 4, 4)
  train = next(data.create_train_iterator(config, local_batch_size=4, seed=0, process_index=0,
                                          process_count=1))
  assert train["image"].shape == (4, 16, 16, 3) and sorted(train["label"]) == [0, 0, 1, 1]
  assert np.isfinite(train["image"]).all()
  batches = list(data.create_eval_iterator(config, local_batch_size=3, process_index=0, process_count=1))
  assert [b["mask"].sum() for b in batches] == [3, 1]
  assert sorted(np.concatenate([b["label"][b["mask"]] for b in batches])) == [0, 0, 1, 1]


def test_truncated_file_fails_naming_the_file(tmp_path):
  root = str(tmp_path)
  for split in ("train", "val"):
    _odd_files(root, split)
  bad = _truncated_jpeg(f"{root}/val/dog/truncated.jpg")
  with pytest.raises(folder.BadImageError, match="truncated.jpg"):
    folder.decode_image_file(bad)
  with pytest.raises(folder.BadImageError) as error:
    list(data.create_eval_iterator(_config(root), local_batch_size=2, process_index=0, process_count=1))
  assert bad in str(error.value)
  assert folder.scan_folder(root) == [str(error.value)]


def test_bad_folder_layouts(tmp_path):
  with pytest.raises(ValueError, match="config.dataset.data_dir"):
    data.dataset_info(_config(None))
  with pytest.raises(FileNotFoundError, match="no train/ sub-folder"):
    data.dataset_info(_config(str(tmp_path)))
  _write(f"{tmp_path}/train/a/x.png", Image.fromarray(GREY, "L"))
  with pytest.raises(FileNotFoundError, match="no val/, validation/ or test/"):
    data.dataset_info(_config(str(tmp_path)))


def test_even_slices_follow_tfds_even_splits():
  # tfds.split_for_jax_process docstring: "if there is 11 examples with n=3, splits will contain [4, 4, 3]".
  assert [folder.even_slice(11, i, 3) for i in range(3)] == [(0, 4), (4, 8), (8, 11)]
  for num, count in ((10, 4), (2, 3), (1_437, 8)):
    slices = [folder.even_slice(num, i, count) for i in range(count)]
    assert slices[0][0] == 0 and slices[-1][1] == num
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous, disjoint, covering
    sizes = [stop - start for start, stop in slices]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
