"""The training job end to end on the embedded digits: metrics, masked evaluation, checkpoints,
resume, eval-only, non-finite losses, bad configs; and 8 simulated devices against 1.

One tiny job (MobileNetV3-Small-minimal x0.35, 32x32, batch 32, 3 steps) runs in this process while the same job
runs on 8 simulated CPU devices in a subprocess (XLA_FLAGS must precede the JAX import there).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from mobilenet_jax import data, train
from mobilenet_jax.data import sources
from mobilenet_jax.train import init_from, steps

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
  """Same global batch and seed: global BatchNorm under jit makes the losses agree; evaluation
  (360 digits in batches of 64 = 8 per device, the last one padded) counts every example once."""
  eight = _result(run["eight"])
  records = train.read_metrics(run["workdir"])
  one = [r["train_loss"] for r in records if "train_loss" in r]
  assert eight["devices"] == 8 and len(one) == len(eight["losses"]) == 3
  np.testing.assert_allclose(eight["losses"], one, rtol=1e-4)
  (evaluation,) = eight["evaluations"]
  (one_evaluation,) = [r for r in records if "eval_top1" in r]
  assert evaluation["eval_examples"] == 360
  for key in ("eval_top1", "eval_top5"):   # a near-tie may flip one example's rank
    assert abs(round(evaluation[key] * 360) - round(one_evaluation[key] * 360)) <= 1, key
  assert evaluation["eval_loss"] == pytest.approx(one_evaluation["eval_loss"], rel=1e-4)


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


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, variables, images):
  return model.apply(variables, images)


def _init(model, seed):
  """The variables a run with this seed initialises (jitted: op by op is slow)."""
  init = jax.jit(functools.partial(model.init, train=False))
  return init(jax.random.PRNGKey(seed), np.zeros((1, 32, 32, 3), np.float32))


def _direct_evaluation(config, variables):
  """top-1, top-5 and mean cross-entropy of `variables` on all 360 held-out digits, in numpy."""
  (batch,) = list(data.create_eval_iterator(config, local_batch_size=360))  # the whole split
  assert batch["mask"].all() and len(batch["label"]) == 360
  logits = np.asarray(_logits(train.create_model(config, num_classes=10), variables,
                              batch["image"]), np.float64)
  labels = batch["label"]
  top5 = np.argsort(-logits, axis=1)[:, :5]
  log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)
                              ) - logits.max(1, keepdims=True)
  return {"eval_top1": np.mean(logits.argmax(1) == labels),
          "eval_top5": np.mean((top5 == labels[:, None]).any(1)),
          "eval_loss": -np.mean(log_probs[np.arange(360), labels])}


def _checkpoint_variables(workdir, step=3):
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                          "state"))
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


def test_eval_scores_exactly_the_whole_split(run):
  """The eval loop's metrics use the mask: equal to a direct numpy computation on all 360 images."""
  expected = _direct_evaluation(run["config"], _checkpoint_variables(run["workdir"]))
  (evaluation,) = [r for r in train.read_metrics(run["workdir"]) if "eval_top1" in r]
  assert evaluation["eval_top1"] == pytest.approx(expected["eval_top1"], abs=1e-9)
  assert evaluation["eval_top5"] == pytest.approx(expected["eval_top5"], abs=1e-9)
  assert evaluation["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-4)


def test_eval_only_scores_the_latest_checkpoint(run):
  config = run["config"].copy_and_resolve_references()
  config.eval_only = True
  result = train.train_and_evaluate(config, run["workdir"])
  (evaluation,) = [r for r in train.read_metrics(run["workdir"]) if "eval_top1" in r][:1]
  assert result["step"] == 3
  for key in ("eval_top1", "eval_top5", "eval_loss", "ema_eval_top1"):
    assert result[key] == pytest.approx(evaluation[key], rel=1e-6)


def test_resume_then_non_finite_update_stops_without_a_nan_checkpoint(run, monkeypatch):
  """Running again resumes at step 3; NaN images make step 4's update non-finite (a NaN learning
  rate is refused before compiling: test_reliability_errors.py)."""
  create = data.create_train_iterator

  def nan_in_first_batch(*args, **kwargs):
    for n, batch in enumerate(create(*args, **kwargs), 1):
      yield {**batch, "image": np.full_like(batch["image"], np.nan)} if n == 1 else batch

  monkeypatch.setattr(data, "create_train_iterator", nan_in_first_batch)
  config = run["config"].copy_and_resolve_references()
  config.num_train_steps = 5
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
  with pytest.raises(sources.DatasetNotReadyError, match="(?i)imagenet2012") as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "download" in str(error.value).lower() or "manual" in str(error.value).lower()
  assert not (tmp_path / "run").exists()  # stopped before anything was written
  config.dataset.name = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
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


# The first parameter (in path order) whose shape differs from the 0.35 run's checkpoint, with the
# shape this config expects, then the checkpoint's; V2 at 0.35 has the same paths but other widths.
FIRST_MISMATCH = {
    ("mobilenet_v3_small_minimal", 0.5):
        "blocks_1/project/conv/kernel: expected shape (1, 1, 40, 16), found (1, 1, 40, 8)",
    ("mobilenet_v2", 0.35):
        "blocks_1/depthwise/conv/kernel: expected shape (3, 3, 1, 48), found (3, 3, 1, 40)",
}


def test_init_from_pretrained_directory(run, tmp_path):
  """A `save_pretrained` directory starts a run (eval_only: its scores are the saved model's); a
  1000-class head is re-initialised for 10 classes while the backbone keeps the saved values;
  another width or architecture, or another BatchNorm epsilon, is a clear error."""
  from mobilenet_jax import pretrained

  variables = _checkpoint_variables(run["workdir"])
  pretrained.save_pretrained(str(tmp_path / "same"), "mobilenet_v3_small_minimal",
                             {"width_multiplier": 0.35, "num_classes": 10}, variables)
  config = run["config"].copy_and_resolve_references()
  config.eval_only = True
  config.ema_decay = 0.0
  config.init_from = str(tmp_path / "same")
  result = train.train_and_evaluate(config, str(tmp_path / "run_same"))
  (evaluation,) = [r for r in train.read_metrics(run["workdir"]) if "eval_top1" in r][:1]
  assert result["eval_top1"] == pytest.approx(evaluation["eval_top1"], abs=1e-9)

  # An "ImageNet" checkpoint: every backbone value scaled by a random factor (far from a fresh
  # initialisation and from the run's), a random 1000-class head.
  rng = np.random.default_rng(0)
  scaled = lambda x: np.asarray(x) * rng.uniform(0.5, 1.5, np.shape(x)).astype(np.float32)
  imagenet = jax.tree.map(scaled, variables)
  features = variables["params"]["classifier"]["kernel"].shape[0]
  imagenet["params"]["classifier"] = {
      "kernel": rng.normal(0, 1, (features, 1000)).astype(np.float32),
      "bias": rng.normal(0, 1, 1000).astype(np.float32)}
  pretrained.save_pretrained(str(tmp_path / "imagenet"), "mobilenet_v3_small_minimal",
                             {"width_multiplier": 0.35}, imagenet)
  config.init_from = str(tmp_path / "imagenet")
  # What the loader hands the run: every saved backbone value and statistic, no classifier.
  model = train.create_model(config, num_classes=10)
  fresh = _init(model, config.seed)
  loaded = init_from.load_initial_variables(config.init_from, fresh, config.model.to_dict())
  for collection in ("params", "batch_stats"):
    saved = traverse_util.flatten_dict(imagenet[collection], sep="/")
    if collection == "params":
      saved = {k: v for k, v in saved.items() if not k.startswith("classifier/")}
    assert sorted(loaded[collection]) == sorted(saved)
    for key, value in saved.items():
      np.testing.assert_array_equal(loaded[collection][key], value, err_msg=key)
  # The run's evaluation: the saved backbone with the classifier a fresh run initialises.
  result = train.train_and_evaluate(config, str(tmp_path / "run_head"))
  fresh = fresh["params"]["classifier"]
  expected = _direct_evaluation(config, {"params": {**imagenet["params"], "classifier": fresh},
                                         "batch_stats": imagenet["batch_stats"]})
  assert result["eval_examples"] == 360
  assert result["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)
  assert result["eval_top1"] == pytest.approx(expected["eval_top1"], abs=1 / 360)

  for name, width in FIRST_MISMATCH:
    config.model.name, config.model.width_multiplier = name, width
    with pytest.raises(ValueError) as error:
      train.train_and_evaluate(config, str(tmp_path / "run_other"))
    assert (f"holds mobilenet_v3_small_minimal {{'width_multiplier': 0.35}}, which does not fit "
            f"this config's model: params/{FIRST_MISMATCH[name, width]}.") in str(error.value)

  pretrained.save_pretrained(str(tmp_path / "pytorch"), "mobilenet_v3_small_minimal",
                             {"width_multiplier": 0.35, "num_classes": 10, "bn_epsilon": 1e-5},
                             variables)
  config = run["config"].copy_and_resolve_references()
  config.eval_only, config.init_from = True, str(tmp_path / "pytorch")
  config.model.bn_epsilon = 1e-3   # set by the config: kept, and the checkpoint's 1e-5 differs
  with pytest.raises(ValueError, match=r"trained with bn_epsilon=1e-05 but the config has "
                                       r"model.bn_epsilon=0.001; set "
                                       r"--config.model.bn_epsilon=1e-05"):
    train.train_and_evaluate(config, str(tmp_path / "run_epsilon"))
  assert not (tmp_path / "run_epsilon" / "config.json").exists()
  config.model.bn_epsilon = None   # unset: the checkpoint's
  train.train_and_evaluate(config, str(tmp_path / "run_epsilon"))
  with open(tmp_path / "run_epsilon" / "config.json") as f:
    assert json.load(f)["model"]["bn_epsilon"] == 1e-5


@pytest.mark.parametrize("name,width", list(FIRST_MISMATCH))
def test_checkpoint_of_another_architecture_is_a_clear_error(run, name, width):
  """The README's promise: the first mismatching parameter path and both shapes."""
  config = run["config"].copy_and_resolve_references()
  config.model.name, config.model.width_multiplier = name, width
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, run["workdir"])
  message = str(error.value)
  assert "was written by another model (mobilenet_v3_small_minimal " in message
  assert f"than this config's ({name} " in message
  assert f"): {FIRST_MISMATCH[name, width]}. Use another --workdir" in message


def test_logged_metrics_average_the_interval_and_name_the_non_finite_step(run, tmp_path,
                                                                          monkeypatch):
  """log_every_steps=3: the step-3 record is the mean of steps 1-3 (the 1-step records of `run`, the
  same job); NaN images in batch 5 stop the run when steps 4-6 are logged, naming step 5."""
  create = data.create_train_iterator

  def nan_in_batch_5(*args, **kwargs):
    for n, batch in enumerate(create(*args, **kwargs), 1):
      yield {**batch, "image": np.full_like(batch["image"], np.nan)} if n == 5 else batch

  monkeypatch.setattr(data, "create_train_iterator", nan_in_batch_5)
  config = tiny_config()
  config.num_train_steps, config.log_every_steps = 6, 3
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError, match=r"non-finite loss, gradients or update at step 5 "
                                               r"\(loss nan\)"):
    train.train_and_evaluate(config, workdir)
  (record,) = train.read_metrics(workdir)
  steps_1_to_3 = [r for r in train.read_metrics(run["workdir"])
                  if "train_loss" in r and r["step"] <= 3]
  assert record["step"] == 3 and len(steps_1_to_3) == 3
  for key in ("train_loss", "train_accuracy", "grad_norm"):
    assert record[key] == pytest.approx(np.mean([r[key] for r in steps_1_to_3]), rel=1e-6), key
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "6"))


def test_grouped_batchnorm_and_half_precision_in_a_training_run(tmp_path):
  """bn_group_size=8, half_precision: step 1's loss is that of a plain bfloat16 network applied to
  each group of 8 images on its own (BatchNorm over each group, MobileNetV2 paper section 6.1's
  per-replica statistics); params and BatchNorm statistics stay float32 in the checkpoint. With
  float32 activations the loss moves by ~7e-3, with global BatchNorm by ~3e-2."""
  import mobilenet_jax

  config = tiny_config(bn_group_size=8)
  config.half_precision, config.num_train_steps = True, 1
  config.model.dropout_rate = 0.0   # step 1's loss without dropout masks
  result = train.train_and_evaluate(config, str(tmp_path / "run"))

  model = mobilenet_jax.create_model("mobilenet_v3_small_minimal", width_multiplier=0.35,
                                     bn_momentum=0.9, num_classes=10, dropout_rate=0.0,
                                     dtype=jax.numpy.bfloat16)
  variables = _init(model, config.seed)
  batch = next(data.create_train_iterator(config, local_batch_size=32, seed=config.seed))
  apply = jax.jit(lambda images: model.apply(variables, images, train=True,
                                             mutable=["batch_stats"]))
  groups = [apply(batch["image"][i:i + 8]) for i in range(0, 32, 8)]
  logits = np.concatenate([np.asarray(g[0], np.float64) for g in groups])
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  targets = np.eye(10)[batch["label"]] * (1 - config.label_smoothing) + config.label_smoothing / 10
  assert result["train_loss"] == pytest.approx(-(targets * log_probs).sum(1).mean(), abs=1e-3)

  saved = _checkpoint_variables(str(tmp_path / "run"), step=1)
  assert {x.dtype for x in jax.tree.leaves(saved)} == {np.dtype(np.float32)}
  group_means = jax.tree.map(lambda *s: np.mean(s, axis=0), *[g[1]["batch_stats"] for g in groups])
  for found, expected in zip(jax.tree.leaves(saved["batch_stats"]), jax.tree.leaves(group_means)):
    np.testing.assert_allclose(found, expected, atol=1e-2)
