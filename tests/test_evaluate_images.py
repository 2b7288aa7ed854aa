"""`mobilenet_jax.evaluate`'s image listing and labels, and the eval recipes' crops (no real data)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mobilenet_jax.data import eval_recipes
from mobilenet_jax.evaluate.images import list_images, prepared_batches


def write_image(path, size=(40, 30), value=128):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_labels_from_class_folders_and_leading_integers(tmp_path):
  write_image(tmp_path / "n01443537" / "a.jpg")       # ImageNet WordNet id: goldfish = 1
  write_image(tmp_path / "7" / "b.png")               # an integer folder
  write_image(tmp_path / "042_n01644373_tree_frog.JPEG")
  write_image(tmp_path / "cat.bmp")                   # no label
  (tmp_path / "notes.txt").write_text("not an image")
  paths, labels = list_images(str(tmp_path))
  assert [p[len(str(tmp_path)) + 1:] for p in paths] == [
      "042_n01644373_tree_frog.JPEG", "cat.bmp", "7/b.png", "n01443537/a.jpg"]
  assert labels == [42, None, 7, 1]


def test_named_class_folders_are_numbered_in_sorted_order(tmp_path):
  for name in ("zebra", "ant", "moth"):
    write_image(tmp_path / name / "x.png")
  assert list_images(str(tmp_path))[1] == [0, 1, 2]   # ant, moth, zebra


def test_empty_or_missing_folder_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no images"):
    list_images(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not a directory"):
    list_images(str(tmp_path / "missing"))


def test_tf_slim_recipe_keeps_the_central_part_of_each_side():
  # A 64x32 image whose outer 1/16 on each side is black: TF-slim's central 87.5% of each side
  # keeps none of it, whatever the aspect ratio; the result is inception-normalised.
  image = np.zeros((32, 64, 3), np.uint8)
  image[2:30, 4:60] = 255
  out = np.asarray(eval_recipes.prepare(image, eval_recipes.tf_slim(16)))
  assert out.shape == (16, 16, 3)
  np.testing.assert_allclose(out, 1.0)


@pytest.mark.parametrize("recipe", [eval_recipes.torchvision(resolution=32, resize_size=40),
                                    eval_recipes.timm("mobilenetv3_large_100", 32, 0.8)],
                         ids=["torchvision", "timm"])
def test_resize_crop_recipe_resizes_the_shorter_side_then_crops(recipe, tmp_path):
  """Through the evaluate command's image reader (the recipe runs inside a tf.function there)."""
  image = np.zeros((100, 200, 3), np.uint8)
  image[:, 75:125] = 255   # a central white band 1/4 of the width
  Image.fromarray(image).save(tmp_path / "band.png")
  (out,) = next(prepared_batches([str(tmp_path / "band.png")], recipe, batch_size=1))
  assert out.shape == (32, 32, 3)
  # 100x200 -> 40x80; the 32 central columns of 80 hold the 20-column band in their middle.
  white = (out[..., 0] > 0).all(0)
  assert white[10:22].all() and not white[:5].any() and not white[-5:].any()
  assert eval_recipes.timm("tf_mobilenetv3_large_100").normalization == "inception"
  assert eval_recipes.timm("mobilenetv3_large_100.ra_in1k").interpolation == "bicubic"
