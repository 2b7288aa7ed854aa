"""Config files (configs/*.py, installed as mobilenet_jax.configs), their "width=...,resolution=..."
argument, `--config` by path or by name, and the config checks."""

import importlib
import os
import sys

import pytest
from absl import flags

from mobilenet_jax import config_files, train
from mobilenet_jax.configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {  # file -> (argument, expected model name)
    "default": (None, "mobilenet_v2"),
    "ablation_digits": (None, "mobilenet_v2"),
    "mobilenet_v1": ("width=0.75,resolution=192", "mobilenet_v1"),
    "mobilenet_v2": ("width=0.75,resolution=160,expansion=4", "mobilenet_v2"),
    "mobilenet_v3_large": ("width=0.75,resolution=192", "mobilenet_v3_large"),
    "mobilenet_v3_small": ("width=0.75,resolution=192,minimal", "mobilenet_v3_small_minimal"),
    "mobilenet_v3_large_timm": ("width=0.75,resolution=192", "mobilenet_v3_large"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_config_builds_a_valid_run(name):
  arg, model_name = VARIANTS[name]
  module = importlib.import_module(f"mobilenet_jax.configs.{name}")
  assert "python -m mobilenet_jax.main" in module.__doc__ and "xpected" in module.__doc__
  config = train.complete_config(module.get_config(arg))
  assert config.model.name == model_name
  if arg:
    assert config.model.width_multiplier == 0.75 and config.resolution in (160, 192)
  if name == "mobilenet_v2":
    assert config.model.expansion == 4.0
  train.validate_config(config, device_count=8)
  train.create_model(config, num_classes=1000).validate()


def test_paper_recipes():
  v2 = importlib.import_module("mobilenet_jax.configs.mobilenet_v2").get_config()
  assert (v2.optimizer.name, v2.optimizer.rmsprop_decay, v2.optimizer.momentum) == ("rmsprop", 0.9, 0.9)
  assert (v2.optimizer.weight_decay, v2.schedule.learning_rate, v2.schedule.decay_rate) == (4e-5, 0.045, 0.98)
  v3 = importlib.import_module("mobilenet_jax.configs.mobilenet_v3_large").get_config()
  assert (v3.schedule.learning_rate, v3.batch_size, v3.schedule.decay_rate, v3.schedule.decay_epochs) == (
      0.1, 4096, 0.99, 3.0)
  assert (v3.model.dropout_rate, v3.optimizer.weight_decay, v3.ema_decay) == (0.2, 1e-5, 0.9999)
  assert v3.optimizer.rmsprop_initial_scale == 1.0 and v3.optimizer.rmsprop_eps_in_sqrt


def test_parse_arg():
  args = common.parse_arg("width=0.5, resolution=160,minimal", width=1.0, resolution=224,
                          minimal=False, model="x")
  assert (args.width, args.resolution, args.minimal, args.model) == (0.5, 160, True, "x")
  with pytest.raises(ValueError, match="unknown config argument 'widht'"):
    common.parse_arg("widht=0.5", width=1.0)
  with pytest.raises(ValueError, match="expected a int"):
    common.parse_arg("resolution=big", resolution=224)
  with pytest.raises(ValueError, match="expected a bool"):
    common.parse_arg("minimal=maybe", minimal=False)


def _parse_command_line(monkeypatch, *argv):
  """What `python -m mobilenet_jax.main ARGV` parses (config_flags reads sys.argv itself)."""
  argv = ["prog", *argv]
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  config_files.define_config_flag("config", default="default", flag_values=values)
  values(argv)
  return values.config


def test_command_line_overrides_and_unknown_keys(monkeypatch):
  monkeypatch.chdir(ROOT)
  config = _parse_command_line(monkeypatch, "--config=configs/mobilenet_v3_large.py:width=0.75,resolution=192",
                               "--config.batch_size=512", "--config.optimizer.eps=0.002",
                               "--config.model.drop_path_rate=0.1")
  assert (config.model.width_multiplier, config.resolution, config.batch_size) == (0.75, 192, 512)
  assert (config.optimizer.eps, config.model.drop_path_rate) == (0.002, 0.1)
  assert _parse_command_line(monkeypatch).model.name == "mobilenet_v2"  # no --config: configs/default.py
  with pytest.raises(AttributeError, match='Did you mean "batch_size" instead of "bach_size"'):
    _parse_command_line(monkeypatch, "--config.bach_size=512")


def test_config_by_shipped_name_from_any_directory(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)   # no configs/ here: the names resolve to the installed recipes
  for spec in ("mobilenet_v3_small:minimal", "mobilenet_v3_small.py:minimal",
               "configs/mobilenet_v3_small.py:minimal"):
    assert _parse_command_line(monkeypatch, f"--config={spec}").model.name == (
        "mobilenet_v3_small_minimal")
  own = tmp_path / "mine.py"    # a file at the given path wins
  own.write_text("from mobilenet_jax.configs import default\n"
                 "def get_config(arg=None):\n"
                 "  c = default.get_config()\n  c.batch_size = int(arg)\n  return c\n")
  assert _parse_command_line(monkeypatch, "--config=mine.py:32").batch_size == 32
  assert config_files.load("mine.py:16").batch_size == 16
  with pytest.raises(flags.IllegalFlagValueError, match="not a shipped recipe.*mobilenet_v2"):
    _parse_command_line(monkeypatch, "--config=mobilenet_v9")


def test_unknown_key_in_a_python_config_is_an_error():
  config = train.base_config().to_dict()
  config["optimizer"]["weight_decy"] = 1e-4
  with pytest.raises(ValueError, match="unknown config key 'optimizer.weight_decy'.*weight_decay"):
    train.complete_config(config)
  assert train.complete_config({"batch_size": 8}).batch_size == 8  # partial configs are completed


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "mobilenet_v4", "unknown model.name 'mobilenet_v4'"),
    ("model.width_multiplier", 0.0, "width_multiplier must be > 0"),
    ("model.expansion", 0.5, "expansion must be >= 1"),
    ("resolution", 16, "resolution must be >= 32"),
    ("batch_size", 100, "multiple of the device count"),
    ("bn_group_size", 48, "must be 0 .* or divide batch_size"),
    ("optimizer.name", "lamb", "optimizer.name must be one of"),
    ("schedule.name", "linear", "schedule.name must be one of"),
])
def test_bad_values_are_clear_errors(key, value, message):
  config = train.base_config()
  config.batch_size = 128
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=message):
    train.validate_config(config, device_count=8)
