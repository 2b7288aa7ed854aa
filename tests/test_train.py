"""The training job end to end on the embedded digits: metrics, masked evaluation, checkpoints,
resume, eval-only, non-finite losses, bad configs; and 8 simulated devices against 1.

One tiny job (MobileNetV3-Small-minimal x0.35, 32x32, batch 32, 3 steps) runs in this process while the same job
runs on 8 simulated CPU devices in a subprocess (XLA_FLAGS must precede the JAX import there).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mobilenet_jax import data, train
from mobilenet_jax.train import steps

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)

import fast_compile  # noqa: E402
from multidevice_script import tiny_config  # noqa: E402

EVAL_BATCH = 64  # the 360 held-out digits are not a multiple of it: the last batch is padded


def _start_multidevice(workdir, num_devices):
  env = fast_compile.child_env()
  return subprocess.Popen([sys.executable, os.path.join(TESTS, "multidevice_script.py"),
                           str(workdir), str(num_devices)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _result(process):
  output = process.communicate(timeout=300)[0]
  assert process.returncode == 0, output[-3000:]
  line = [l for l in output.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The in-process 1-device job (with EMA), while the 8-device one runs in a subprocess."""
  eight = _start_multidevice(tmp_path_factory.mktemp("eight"), 8)
  try:
    workdir = str(tmp_path_factory.mktemp("one"))
    config = tiny_config()
    config.ema_decay = 0.9
    config.tensorboard = True
    result = train.train_and_evaluate(config, workdir)
  except BaseException:
    eight.kill()
    raise
  return {"workdir": workdir, "config": config, "result": result, "eight": eight}


def test_eight_devices_match_one_device(run):
  """Same global batch and seed: global BatchNorm under jit makes the losses agree."""
  eight = _result(run["eight"])
  one = [r["train_loss"] for r in train.read_metrics(run["workdir"]) if "train_loss" in r]
  assert eight["devices"] == 8 and len(one) == len(eight["losses"]) == 3
  np.testing.assert_allclose(eight["losses"], one, rtol=1e-4)


def test_metrics_file_config_and_tensorboard(run):
  records = train.read_metrics(run["workdir"])
  train_records = [r for r in records if "train_loss" in r]
  assert [r["step"] for r in train_records] == [1, 2, 3]
  for r in train_records:
    assert {"train_loss", "train_accuracy", "learning_rate", "images_per_sec"} <= set(r)
    assert 0 <= r["train_accuracy"] <= 1 and r["learning_rate"] == pytest.approx(0.01)
  (evaluation,) = [r for r in records if "eval_top1" in r]
  assert evaluation["step"] == 3 and evaluation["eval_examples"] == 360
  for key in ("eval_top1", "eval_top5", "ema_eval_top1", "ema_eval_top5"):
    assert 0 <= evaluation[key] <= 1
  assert evaluation["eval_top5"] >= evaluation["eval_top1"]
  with open(os.path.join(run["workdir"], "config.json")) as f:
    assert json.load(f)["model"]["width_multiplier"] == 0.35
  assert os.listdir(os.path.join(run["workdir"], "tensorboard"))
  assert run["result"]["step"] == 3 and run["result"]["eval_top1"] == evaluation["eval_top1"]


def test_eval_scores_exactly_the_whole_split(run):
  """The eval loop's metrics use the mask: equal to a direct numpy computation on all 360 images."""
  workdir, config = run["workdir"], run["config"]
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "3", "state"))
  (batch,) = list(data.create_eval_iterator(config, local_batch_size=360))  # the whole split
  assert batch["mask"].all() and len(batch["label"]) == 360
  model = train.create_model(config, num_classes=10)
  apply = jax.jit(lambda variables, images: model.apply(variables, images))
  logits = np.asarray(apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                            batch["image"]), np.float64)
  labels = batch["label"]
  top5 = np.argsort(-logits, axis=1)[:, :5]
  log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)
                              ) - logits.max(1, keepdims=True)
  (evaluation,) = [r for r in train.read_metrics(workdir) if "eval_top1" in r]
  assert evaluation["eval_top1"] == pytest.approx(np.mean(logits.argmax(1) == labels), abs=1e-9)
  assert evaluation["eval_top5"] == pytest.approx(np.mean((top5 == labels[:, None]).any(1)),
                                                  abs=1e-9)
  assert evaluation["eval_loss"] == pytest.approx(-np.mean(log_probs[np.arange(360), labels]),
                                                  rel=1e-4)


def test_eval_only_scores_the_latest_checkpoint(run):
  config = run["config"].copy_and_resolve_references()
  config.eval_only = True
  result = train.train_and_evaluate(config, run["workdir"])
  (evaluation,) = [r for r in train.read_metrics(run["workdir"]) if "eval_top1" in r][:1]
  assert result["step"] == 3
  for key in ("eval_top1", "eval_top5", "eval_loss", "ema_eval_top1"):
    assert result[key] == pytest.approx(evaluation[key], rel=1e-6)


def test_resume_then_non_finite_update_stops_without_a_nan_checkpoint(run):
  """Running again resumes at step 3; a NaN learning rate makes step 4's update non-finite."""
  config = run["config"].copy_and_resolve_references()
  config.num_train_steps = 5
  config.schedule.learning_rate = float("nan")
  with pytest.raises(FloatingPointError, match="at step 4"):
    train.train_and_evaluate(config, run["workdir"])
  manager = ocp.CheckpointManager(os.path.join(run["workdir"], "checkpoints"))
  assert manager.latest_step() == 3
  state = ocp.StandardCheckpointer().restore(os.path.join(run["workdir"], "checkpoints", "3",
                                                          "state"))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_missing_or_unknown_dataset_stops_before_training(tmp_path):
  config = tiny_config()
  config.dataset.name = "imagenet2012"
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.dataset.download = False
  with pytest.raises(Exception, match="(?i)imagenet2012") as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "download" in str(error.value).lower() or "manual" in str(error.value).lower()
  assert not (tmp_path / "run").exists()  # stopped before anything was written
  config.dataset.name = "no_such_dataset_xyz"
  with pytest.raises(Exception, match="no_such_dataset_xyz"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_unknown_config_key_and_bad_values_fail_before_compiling(tmp_path):
  config = tiny_config().to_dict()
  config["num_train_step"] = 10
  with pytest.raises(ValueError, match="unknown config key 'num_train_step'"):
    train.train_and_evaluate(config, str(tmp_path / "a"))
  config = tiny_config()
  config.batch_size = 12  # fine on 1 device, but not a multiple of bn_group_size
  config.bn_group_size = 8
  with pytest.raises(ValueError, match="bn_group_size"):
    train.train_and_evaluate(config, str(tmp_path / "b"))


def test_ema_decay_follows_tf_num_updates_rule():
  assert float(steps.ema_decay_at(jax.numpy.asarray(0), 0.9999, True)) == pytest.approx(0.1)
  assert float(steps.ema_decay_at(jax.numpy.asarray(10**6), 0.9999, True)) == pytest.approx(0.9999)
  assert float(steps.ema_decay_at(jax.numpy.asarray(0), 0.99, False)) == pytest.approx(0.99)


def test_init_from_pretrained_directory(run, tmp_path):
  """A `save_pretrained` directory starts a run (eval_only: its scores are the saved model's); a
  1000-class head is re-initialised for 10 classes; another width is a clear error."""
  from mobilenet_jax import pretrained

  state = ocp.StandardCheckpointer().restore(os.path.join(run["workdir"], "checkpoints", "3",
                                                          "state"))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  pretrained.save_pretrained(str(tmp_path / "same"), "mobilenet_v3_small_minimal",
                             {"width_multiplier": 0.35, "num_classes": 10}, variables)
  config = run["config"].copy_and_resolve_references()
  config.eval_only = True
  config.ema_decay = 0.0
  config.init_from = str(tmp_path / "same")
  result = train.train_and_evaluate(config, str(tmp_path / "run_same"))
  (evaluation,) = [r for r in train.read_metrics(run["workdir"]) if "eval_top1" in r][:1]
  assert result["eval_top1"] == pytest.approx(evaluation["eval_top1"], abs=1e-9)

  features = variables["params"]["classifier"]["kernel"].shape[0]
  variables["params"]["classifier"] = {"kernel": np.zeros((features, 1000), np.float32),
                                       "bias": np.zeros(1000, np.float32)}
  pretrained.save_pretrained(str(tmp_path / "imagenet"), "mobilenet_v3_small_minimal",
                             {"width_multiplier": 0.35}, variables)
  config.init_from = str(tmp_path / "imagenet")
  assert train.train_and_evaluate(config, str(tmp_path / "run_head"))["eval_examples"] == 360

  config.model.width_multiplier = 0.5
  with pytest.raises(ValueError, match=r"does not fit.*params/\w+.*expected shape"):
    train.train_and_evaluate(config, str(tmp_path / "run_wide"))


def test_checkpoint_of_another_architecture_is_a_clear_error(run, tmp_path):
  config = run["config"].copy_and_resolve_references()
  config.model.width_multiplier = 0.5
  with pytest.raises(ValueError, match="written by another model.*expected shape"):
    train.train_and_evaluate(config, run["workdir"])
