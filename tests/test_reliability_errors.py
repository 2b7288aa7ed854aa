"""Bad input gets clear errors before anything is compiled or written: bad configurations, and a
read-only workdir (a read-only tmpfs when this process may mount one, as root with CAP_SYS_ADMIN;
otherwise writes below it are made to fail with EROFS). A full disk and NaN gradients in the middle
of a run are tested in test_reliability.py.
"""

import builtins
import contextlib
import errno
import os
import subprocess

import jax
import pytest

from mobilenet_jax import train
from mobilenet_jax.train import steps


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
    ({"dataset.name": "no_such_dataset_xyz"}, r"no_such_dataset_xyz"),
    ({"dataset.name": "folder", "dataset.data_dir": "/no/such/folder"}, r"/no/such/folder"),
]


@pytest.mark.parametrize("changes,message", BAD_CONFIGS, ids=lambda x: str(x)[:40])
def test_bad_config_fails_before_compiling_or_writing(changes, message, tmp_path, no_compile):
  with pytest.raises(Exception, match=message):
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


@contextlib.contextmanager
def _read_only_directory(path, monkeypatch):
  """`path` on a read-only tmpfs if this process may mount one; else writes below it fail."""
  os.makedirs(path)
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", path],
                             capture_output=True).returncode == 0
  except OSError:  # no mount command
    mounted = False
  if not mounted:
    def refuse_under(real):
      def guarded(target, *args, **kwargs):
        if (isinstance(target, (str, os.PathLike)) and
            os.path.abspath(os.fspath(target)).startswith(path + os.sep)):
          raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(target))
        return real(target, *args, **kwargs)
      return guarded

    monkeypatch.setattr(builtins, "open", refuse_under(builtins.open))
    monkeypatch.setattr(os, "makedirs", refuse_under(os.makedirs))
  try:
    yield
  finally:
    if mounted:
      subprocess.run(["umount", path], check=True)


def test_read_only_workdir_is_a_clear_error(tmp_path, monkeypatch, no_compile):
  read_only = str(tmp_path / "read_only")
  with _read_only_directory(read_only, monkeypatch):
    with pytest.raises(OSError, match="cannot write to workdir .*read_only/run.*writable"):
      train.train_and_evaluate(_config(), os.path.join(read_only, "run"))
    assert not os.path.exists(os.path.join(read_only, "run"))
