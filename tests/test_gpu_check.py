"""The GPU check (experiments/gpu_check.sh, docs/gpu.md) runs end to end on the CPU at tiny sizes.

It runs unattended on a lent GPU with minutes to spare; this rehearsal, through the wrapper a user
runs, keeps a typo or an API change from costing that time. The tests part is left out (it would run
pytest inside pytest); its file selection is checked on its own.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

import fast_compile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(shutil.which("bash") is None, reason="the wrapper is a bash script")
def test_rehearsal_writes_every_part(tmp_path):
  out = tmp_path / "out"
  env = fast_compile.child_env(
      PYTHON=sys.executable,
      PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  run = subprocess.run(
      ["bash", os.path.join(ROOT, "experiments", "gpu_check.sh"), str(out), "--tiny",
       "--steps", "bench,depthwise,profile", "--models", "mobilenet_v3_small", "--modes", "train",
       "--profile-model", "mobilenet_v3_small", "--no-torch-compile", "--depthwise-layers", "3",
       "--depthwise-dtypes", "float32"],
      capture_output=True, text=True, env=env, timeout=600)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  data = json.loads((out / "gpu_check.json").read_text())
  assert "done in" in (out / "gpu_check.log").read_text()

  assert data["environment"]["jax_devices"] and data["environment"]["jax"]
  for part in ("bench", "depthwise", "profile"):
    assert "error" not in data[part], data[part]["error"]

  bench = data["bench"]
  assert bench["bandwidth"]["bytes_per_s"] > 0
  assert [(r["mode"], r["model"]) for r in bench["results"]] == [("train", "mobilenet_v3_small")]
  for result in bench["results"]:
    assert "errors" not in result, result["errors"]
    jax_figures = result["jax"]
    assert jax_figures["images_per_s"]["best"] >= jax_figures["images_per_s"]["median"] > 0
    assert jax_figures["bytes_accessed"] > 0 and jax_figures["memory_roofline_fraction"] > 0
    if importlib.util.find_spec("torchvision") is not None:
      assert result["torch_eager"]["images_per_s"]["median"] > 0
      assert result["jax_over_torch"]["median"] > 0
    assert result["torch_compile"] == {"skipped": "--no-torch-compile"}

  depthwise = data["depthwise"]
  assert len(depthwise["layers"]) == 3
  formulations = {r["formulation"]: r for r in depthwise["results"]}
  assert {"xla_grouped", "shifted_autodiff"} <= set(formulations)
  for entry in formulations.values():
    assert entry["forward"]["ms"] > 0 and entry["backward"]["ms"] > 0, entry
    if entry["formulation"] != "xla_grouped":   # the same convolution, up to float summation order
      assert entry["max_abs_diff_vs_xla_grouped"] < 1e-4, entry

  profile = data["profile"]
  assert profile["model"] == "mobilenet_v3_small" and profile["hlo_op_counts"]
  assert "error" not in profile["trace"], profile["trace"]
  lines = profile["trace"]["lines"]
  assert lines and all(line["top"] for line in lines.values())


def test_tests_part_leaves_out_files_whose_imports_fail(tmp_path):
  """A module that fails to import (as ml_collections on the GPU machine) leaves its test files out,
  named with the error of the import that failed; the others run."""
  fake = tmp_path / "fake"
  fake.mkdir()
  (fake / "ml_collections.py").write_text("raise ImportError('not on this machine')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(fake), ROOT)))
  files, left_out = gpu_check.runnable_test_files(
      ("test_fold.py", "test_configs.py", "test_data_digits.py", "test_no_such_file.py"), env)
  assert files == ["test_fold.py"]
  assert "ImportError: not on this machine" in left_out["test_configs.py"]   # the fake's error
  assert "ImportError: not on this machine" in left_out["test_data_digits.py"]
  assert left_out["test_no_such_file.py"] == "no such file"
