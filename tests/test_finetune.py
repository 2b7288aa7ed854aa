"""Fine-tuning pretrained weights: the architecture and normalisation from the checkpoint's model.json,
a new classifier for another class count, `trainable=head` (a linear probe: frozen layers get no update
and no optimizer state, BatchNorm statistics as loaded), and BatchNorm statistics measured for weights
whose BatchNorm was folded (TFLite files), on the digits and on real CIFAR-10 images with a released
MobileNetV2."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import mobilenet_jax as mj
from mobilenet_jax import pretrained, train, weights
from mobilenet_jax.train.batch_norm_statistics import estimate_batch_norm_statistics

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `configs` is a top-level folder of the repository
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
import fast_compile  # noqa: E402
from cifar_archive import cifar_subset  # noqa: E402
from job_runs import read_state  # noqa: E402
from multidevice_script import tiny_config  # noqa: E402

SHARED = ROOT / ".." / "shared" / "data"
RELEASED_V2 = SHARED / "tflite" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
INCEPTION = {"style": "central_crop", "resolution": 224, "normalization": "inception",
             "crop_fraction": 0.875, "resize_size": None, "interpolation": "bilinear"}


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _save_checkpoint(directory, num_classes, folded):
  """A 'pretrained' V3-Small-minimal x0.35 for `num_classes` classes with random weights and random
  BatchNorm statistics (or, `folded`, the identity statistics of a converted TFLite file)."""
  model = mj.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35,
                          num_classes=num_classes, compute="xla")
  variables = mj.init_variables(model, resolution=32, seed=3)
  rng = np.random.default_rng(0)
  stats = {}
  for key, value in _flat(variables["batch_stats"]).items():
    if folded:
      stats[key] = np.zeros_like(value) if key.endswith("/mean") else np.ones_like(value)
    else:
      stats[key] = (rng.normal(0, 0.1, value.shape) if key.endswith("/mean")
                    else rng.uniform(0.5, 2, value.shape)).astype(value.dtype)
  variables = {"params": jax.device_get(variables["params"]),
               "batch_stats": traverse_util.unflatten_dict(stats, sep="/")}
  pretrained.save_pretrained(str(directory), "mobilenet_v3_small_minimal",
                             {"width_multiplier": 0.35, "num_classes": num_classes}, variables,
                             preprocessing=INCEPTION)
  return variables


def _finetune_config(checkpoint, trainable):
  config = tiny_config()
  config.model.name = None              # unset: from the checkpoint's model.json
  config.model.width_multiplier = None
  config.model.compute = "xla"
  config.init_from = str(checkpoint)
  config.trainable = trainable
  config.num_train_steps = 3
  config.checkpoint_every_steps = 1
  config.keep_checkpoints = 3
  config.schedule.learning_rate = 0.1
  return config


def test_linear_probe_on_digits_trains_only_a_new_classifier(tmp_path, capsys):
  """trainable=head from a 5-class checkpoint on the 10 digits: the model comes from model.json,
  the classifier is re-initialised for 10 classes and is the only thing that moves; every other
  parameter and BatchNorm statistic stays as loaded; the optimizer holds state for the classifier
  only; a normalisation other than the weights' is a warning naming both."""
  saved = _save_checkpoint(tmp_path / "pretrained", num_classes=5, folded=False)
  config = _finetune_config(tmp_path / "pretrained", "head")
  config.dataset.normalization = "imagenet"   # the weights record inception
  workdir = tmp_path / "probe"
  with pytest.warns(UserWarning, match=r"normalization='imagenet' but the init_from weights were "
                                       r"trained with 'inception' inputs"):
    result = train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert "model from the checkpoint: name=mobilenet_v3_small_minimal, width_multiplier=0.35" in out
  assert "re-initialised classifier/bias (5,) -> (10,)" in out
  assert result["eval_examples"] == 360

  saved_params, saved_stats = _flat(saved["params"]), _flat(saved["batch_stats"])
  first, last = read_state(str(workdir), 1), read_state(str(workdir), 3)
  for state in (first, last):
    params, stats = _flat(state["params"]), _flat(state["batch_stats"])
    assert params["classifier/kernel"].shape == (saved_params["classifier/kernel"].shape[0], 10)
    for key, value in saved_params.items():
      if not key.startswith("classifier/"):
        np.testing.assert_array_equal(params[key], value, err_msg=key)
    for key, value in saved_stats.items():
      np.testing.assert_array_equal(stats[key], value, err_msg=key)
  assert not np.array_equal(_flat(first["params"])["classifier/kernel"],
                            _flat(last["params"])["classifier/kernel"])
  # The run's workdir is weights for export and evaluate: its latest checkpoint, its eval images.
  loaded = weights.load(str(workdir))
  assert (loaded.recipe.resolution, loaded.recipe.normalization) == (32, "imagenet")
  assert (loaded.recipe.style, loaded.recipe.crop_fraction) == ("training", 1.0)   # digits: whole
  for key, value in _flat(last["params"]).items():
    np.testing.assert_array_equal(_flat(loaded.variables["params"])[key], value, err_msg=key)
  # SGD momentum: one trace per trainable leaf, nothing for the frozen ones.
  classifier_size = sum(v.size for k, v in saved_params.items() if k.startswith("classifier/")) \
      // 5 * 10
  state_size = sum(np.size(x) for x in jax.tree.leaves(last["opt_state"]) if np.ndim(x) > 0)
  assert state_size == classifier_size


def test_folded_batch_norm_gets_measured_statistics_before_fine_tuning(tmp_path, capsys):
  """trainable=all from a checkpoint with identity BatchNorm statistics (a TFLite file's): the job
  measures them on training images first, so training-mode BatchNorm starts from the pretrained
  function."""
  _save_checkpoint(tmp_path / "pretrained", num_classes=10, folded=True)
  config = _finetune_config(tmp_path / "pretrained", "all")
  config.num_train_steps, config.checkpoint_every_steps = 1, 0
  config.model.bn_momentum = 1.0   # the running statistics keep what the job measured
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "measuring BatchNorm statistics on 256 training images" in capsys.readouterr().out
  stats = _flat(read_state(str(tmp_path / "run"), 1)["batch_stats"])
  assert len(stats) > 20
  for key, value in stats.items():   # none is left at the identity (mean 0, variance 1)
    assert np.any(value != (0.0 if key.endswith("/mean") else 1.0)), key


def test_measured_statistics_keep_the_inference_function_and_fit_training_mode():
  """estimate_batch_norm_statistics on one batch: inference-mode logits unchanged, and training-mode
  logits on that batch (BatchNorm over the same images) equal them; with identity statistics the
  two modes disagree."""
  model = mj.create_model("mobilenet_v2", width_multiplier=0.35, num_classes=10, compute="xla",
                          dropout_rate=0.0)
  variables = jax.device_get(mj.init_variables(model, resolution=32, seed=0))
  epsilon = model.bn_epsilon
  params = {k: (np.full_like(v, np.sqrt(1 + epsilon)) if k.endswith("norm/scale") else v)
            for k, v in _flat(variables["params"]).items()}
  params = {k: (np.random.default_rng(1).normal(0, 0.5, v.shape).astype(v.dtype)
                if k.endswith("norm/bias") else v) for k, v in params.items()}
  folded = {"params": traverse_util.unflatten_dict(params, sep="/"),
            "batch_stats": variables["batch_stats"]}
  images = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))

  def both_modes(v):
    infer = model.apply(v, images, train=False)
    trained, _ = model.apply(v, images, train=True, mutable=["batch_stats"])
    return np.asarray(infer), np.asarray(trained)

  infer, trained = both_modes(folded)
  scale = np.abs(infer).max()
  assert np.abs(trained - infer).max() > 0.1 * scale
  measured = estimate_batch_norm_statistics(model, folded, [images])
  infer_after, trained_after = both_modes(measured)
  np.testing.assert_allclose(infer_after, infer, atol=1e-4 * scale)
  np.testing.assert_allclose(trained_after, infer_after, atol=1e-3 * scale)


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory):
  """cifar10/{train,test}/<class>/*.jpg: a few real CIFAR-10 JPEGs of each class."""
  out = tmp_path_factory.mktemp("cifar") / "cifar10-slice.tar.gz"
  cifar_subset(out, {"train": 4, "test": 2})
  return out


def test_linear_probe_from_a_released_tflite_file_on_real_cifar10(tmp_path, cifar_slice, capsys):
  """The README's journey on a slice of real data: a released MobileNetV2 `.tflite` converted by the
  command, then configs/finetune.py with trainable=head: the network and inception normalisation
  come from the checkpoint, the new head has CIFAR-10's 10 classes, the frozen layers do not move."""
  if not RELEASED_V2.is_file():
    pytest.skip(f"the released MobileNetV2 file is not beside the project ({RELEASED_V2})")
  from mobilenet_jax.configs import finetune

  checkpoint = tmp_path / "v2"
  subprocess.run([sys.executable, "-m", "mobilenet_jax.convert", "--source=tflite",
                  f"--weights={RELEASED_V2}", f"--out={checkpoint}"], check=True,
                 env=fast_compile.child_env(), capture_output=True)
  config = finetune.get_config(f"weights={checkpoint},data={cifar_slice},resolution=32,"
                               "trainable=head,batch=8")
  config.num_train_steps, config.checkpoint_every_steps = 2, 0
  config.eval_batch_size, config.tensorboard, config.progress_bar = 20, False, "off"
  result = train.train_and_evaluate(config, str(tmp_path / "probe"))
  out = capsys.readouterr().out
  assert "input normalization 'inception': as the weights expect" in out
  assert "re-initialised classifier/bias (1000,) -> (10,)" in out
  assert result["eval_examples"] == 20
  _, _, released = pretrained.load_pretrained(str(checkpoint))
  state = read_state(str(tmp_path / "probe"), 2)
  params, stats = _flat(state["params"]), _flat(state["batch_stats"])
  assert params["classifier/kernel"].shape == (1280, 10)
  for key, value in _flat(released["params"]).items():
    if not key.startswith("classifier/"):
      np.testing.assert_array_equal(params[key], value, err_msg=key)
  for key, value in _flat(released["batch_stats"]).items():
    np.testing.assert_array_equal(stats[key], value, err_msg=key)
