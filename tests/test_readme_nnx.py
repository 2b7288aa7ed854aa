"""The README's Flax NNX recipe, run exactly as written (taken from README.md), on a tiny model."""

import pathlib
import re

import numpy as np
import pytest

nnx = pytest.importorskip("flax.nnx")

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
# What the test shrinks: the model and the images (each must occur once in the recipe).
TINY = {'mj.create_model("mobilenet_v3_small")':
        'mj.create_model("mobilenet_v3_small", num_classes=8, width_multiplier=0.35)',
        "(8, 224, 224, 3)": "(8, 32, 32, 3)"}


def readme_nnx_recipe() -> str:
  text = README.read_text()
  section = text[text.index("**Flax NNX**"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_nnx_recipe_trains_weights_and_batch_statistics():
  code = readme_nnx_recipe()
  for old, new in TINY.items():
    assert code.count(old) == 1, old
    code = code.replace(old, new)
  namespace = {}
  exec(compile(code, str(README), "exec"), namespace)
  model = namespace["model"]
  assert np.isfinite(float(namespace["loss"])) and int(namespace["optimizer"].step[...]) == 1
  assert namespace["logits"].shape == (8, 8)
  # One training step moved BatchNorm's running mean from its initial zeros.
  assert np.abs(np.asarray(model.stem["norm"]["mean"])).max() > 0
