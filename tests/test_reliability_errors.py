"""Bad input gets clear errors before anything is compiled or written: bad configurations, and a
read-only workdir; and a workdir that turns read-only in the middle of a run (tests/read_only.py:
a read-only bind mount or the immutable attribute as root, file modes otherwise; skipped where none
works). A full disk and NaN gradients in the middle of a run are tested in test_reliability.py.
"""

import os
import re
import time

import jax
import pytest

from mobilenet_jax import train
from mobilenet_jax.train import metrics, steps

from read_only import ReadOnly, Unavailable


def _config(**changes):
  config = train.base_config()
  values = {
      "model.name": "mobilenet_v3_small_minimal", "model.width_multiplier": 0.35,
      "dataset.name": "digits", "resolution": 32, "batch_size": 32, "eval_batch_size": 360,
      "num_train_steps": 8, "optimizer.name": "sgd", "schedule.name": "constant",
      "schedule.learning_rate": 0.01, "schedule.base_batch_size": 0,
      "schedule.warmup_epochs": 0.0, "log_every_steps": 1, "tensorboard": False,
      "progress_bar": "off", **changes}
  config.update_from_flattened_dict(values)
  return config


@pytest.fixture
def no_compile(monkeypatch):
  """Any attempt to compile a train or eval step fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError("a step was compiled before the configuration error")
  monkeypatch.setattr(steps, "BackgroundCompiled", refuse)


BAD_CONFIGS = [
    ({"model.name": "mobilenet_v4"}, r"unknown model.name 'mobilenet_v4'; valid: .*"
     r"mobilenet_v3_large"),
    ({"model.width_multiplier": 0.0}, r"width_multiplier must be > 0, got 0"),
    ({"model.width_multiplier": -0.5}, r"width_multiplier must be > 0, got -0.5"),
    ({"resolution": 16}, r"resolution must be >= 32.*got 16"),
    ({"model.name": "mobilenet_v2", "model.expansion": 0.5},
     r"model.expansion must be >= 1.*got 0.5"),
    ({"schedule.learning_rate": float("nan")}, r"schedule.learning_rate must be a finite "
     r"number >= 0.0, got nan"),
    ({"schedule.learning_rate": float("inf")}, r"schedule.learning_rate .* got inf"),
    ({"schedule.learning_rate": -0.1}, r"schedule.learning_rate .* got -0.1"),
    ({"optimizer.momentum": 1.5}, r"optimizer.momentum must be a finite number \[0.0, 1.0\), "
     r"got 1.5"),
    ({"optimizer.eps": 0.0}, r"optimizer.eps must be a finite number > 0.0, got 0.0"),
    ({"dataset.name": "no_such_dataset_xyz"}, r"Unknown dataset .*'no_such_dataset_xyz'"),
]
NOT_READY = ({"dataset.name": "folder", "dataset.data_dir": "/no/such/folder"},
             r"/no/such/folder has no train/ sub-folder")


@pytest.mark.parametrize("changes,message", [*BAD_CONFIGS, NOT_READY], ids=lambda x: str(x)[:40])
def test_bad_config_fails_before_compiling_or_writing(changes, message, tmp_path, no_compile):
  from mobilenet_jax.data.sources import DatasetNotReadyError  # a FileNotFoundError

  error = DatasetNotReadyError if (changes, message) == NOT_READY else ValueError
  with pytest.raises(error, match=message):
    train.train_and_evaluate(_config(**changes), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unknown_config_keys_name_the_closest_known_one(tmp_path, no_compile):
  config = _config().to_dict()
  config["batch_szie"] = 64
  with pytest.raises(ValueError, match="unknown config key 'batch_szie'; did you mean 'batch_size'"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config = _config().to_dict()
  config["model"]["widht_multiplier"] = 0.5  # model.* are create_model options
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['widht_multiplier'\].*"
                     "width_multiplier"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_batch_size_must_divide_over_the_devices(tmp_path, monkeypatch, no_compile):
  monkeypatch.setattr(jax, "device_count", lambda: 8)  # what 8 accelerators report
  with pytest.raises(ValueError, match=r"batch_size=12 must be a positive multiple of the device "
                     r"count \(8\)"):
    train.train_and_evaluate(_config(batch_size=12), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.fixture
def read_only_possible(tmp_path):
  """Skips the test (with the reasons) where no mechanism makes a directory read-only here."""
  os.makedirs(tmp_path / "probe")
  with ReadOnly(str(tmp_path / "probe")) as probe:
    try:
      probe.make()
    except Unavailable as e:
      pytest.skip(str(e))


def test_read_only_workdir_is_a_clear_error(tmp_path, no_compile, read_only_possible):
  directory = str(tmp_path / "read_only")
  os.makedirs(directory)
  with ReadOnly(directory) as read_only:
    read_only.make()
    with pytest.raises(OSError, match="cannot write to workdir .*read_only/run.*writable"):
      train.train_and_evaluate(_config(), os.path.join(directory, "run"))
    assert not os.path.exists(os.path.join(directory, "run"))


def test_metrics_write_to_a_workdir_turned_read_only_is_a_clear_error(tmp_path,
                                                                       read_only_possible):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  writer = metrics.MetricWriter(workdir, tensorboard=False)
  writer.write(1, {"train_loss": 1.5})
  with ReadOnly(workdir) as read_only:
    read_only.make()
    with pytest.raises(OSError, match=r"could not write metrics to .*run/metrics.jsonl: .*\(is the "
                                      r"disk full or the workdir read-only\?\): free some space "
                                      r"or make the workdir writable, then run the same command "
                                      r"again to resume from the latest checkpoint$"):
      writer.write(2, {"train_loss": 1.25})
  assert train.read_metrics(workdir) == [{"step": 1, "train_loss": 1.5}]


def test_workdir_read_only_mid_run_keeps_the_latest_complete_checkpoint(tmp_path, monkeypatch,
                                                                        read_only_possible):
  """Checkpoints every 2 steps; once step 2's is committed the workdir turns read-only (when the
  loop asks for batch 4): saving step 4 fails with a clear OSError, step 2 stays the latest."""
  from mobilenet_jax import data
  import orbax.checkpoint as ocp

  workdir = str(tmp_path / "run")
  committed = os.path.join(workdir, "checkpoints", "2")
  read_only = ReadOnly(workdir)
  create = data.create_train_iterator

  def read_only_from_batch_4(*args, **kwargs):
    for n, batch in enumerate(create(*args, **kwargs), 1):
      if n == 4:
        deadline = time.monotonic() + 120
        while not os.path.isdir(committed) and time.monotonic() < deadline:
          time.sleep(0.05)
        read_only.make()
      yield batch

  monkeypatch.setattr(data, "create_train_iterator", read_only_from_batch_4)
  config = _config(checkpoint_every_steps=2, log_every_steps=100, keep_checkpoints=5)
  with read_only:
    with pytest.raises(OSError) as error:
      train.train_and_evaluate(config, workdir)
    message = str(error.value)
    assert read_only.how, message   # it did turn read-only (the error is not from elsewhere)
    assert re.search(r"could not write the checkpoint of step 4 to .*run/checkpoints: .*\(is the "
                     r"disk full or the workdir read-only\?\); the previous complete checkpoint "
                     r"stays the latest: free some space or make the workdir writable, then run "
                     r"the same command again to resume from it$", message), message
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
  assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step() == 2
  state = ocp.StandardCheckpointer().restore(os.path.join(committed, "state"))
  assert int(state["step"]) == 2
