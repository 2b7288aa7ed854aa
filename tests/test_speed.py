"""The benchmark runs end to end and reports what it promises (correctness only; no timing asserts)."""

import json
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax.tools import benchmark, jax_runners, timing


def _fast_init(model, resolution):
  """Random float32 variables via eval_shape, without compiling the real initialiser."""
  shapes = jax.eval_shape(model.clone(dtype=None).init, jax.random.key(0),
                          jnp.zeros((1, resolution, resolution, 3)))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.0, s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench") / "result.json"
  patch = pytest.MonkeyPatch()
  patch.setattr(jax_runners, "init_variables", _fast_init)
  try:
    results = benchmark.main(
        ["--models", "v3_small", "--batch", "2", "--resolution", "32", "--frameworks",
         "jax,torch", "--repeats", "2", "--latency-repeats", "2", "--warmup", "1",
         "--settle-s", "0", "--peak-size", "256", "--malloc", "default", "--json", str(path)])
  finally:
    patch.undo()
  return results, json.loads(path.read_text())


def test_every_mode_and_framework_is_measured(report):
  results, saved = report
  got = {(r.framework, r.mode, r.batch) for r in results}
  assert got == {(f, m, b) for f in ("jax", "torch")
                 for m, b in (("infer", 2), ("latency", 1), ("train", 2))}
  for r in results:
    assert len(r.seconds) == 2 and all(t > 0 for t in r.seconds)
    assert 0 < r.peak_fraction < 10 and r.model_gflops > 0
  jax_rows = [r for r in results if r.framework == "jax"]
  assert all(r.compile_s > 0 and r.peak_mb > 0 for r in jax_rows)
  train = next(r for r in jax_rows if r.mode == "train")
  infer = next(r for r in jax_rows if r.mode == "infer")
  # Model FLOPs come from the papers' MAdds (57M at 224 for V3-Small) scaled to 32x32.
  assert train.model_gflops == pytest.approx(3 * infer.model_gflops)
  assert infer.note == "BN folded"  # batch 2 <= micro-batch: one whole batch
  assert saved["machine"]["matmul_peak_gflops"]["float32"] > 0
  assert saved["machine"]["torch_threads"] == saved["machine"]["cpu_count"]
  assert len(saved["results"]) == len(results)
  assert saved["command"].startswith("python -m mobilenet_jax.tools.benchmark --models v3_small")


def test_figures_of_a_worked_example(monkeypatch):
  """Steps of known durations on a scripted clock: 2 warm-up calls of 9 s, then timed calls of
  0.5, 0.1 and 0.2 s at batch 4. The median call is 0.2 s: 4 / 0.2 = 20 images/s, 200 ms per call;
  1.25e8 MAdds x 2 x 4 images = 1 GFLOP per call, 5 GFLOP/s = half of a 10 GFLOP/s peak."""
  clock = [100.0]
  durations = iter([9.0, 9.0, 0.5, 0.1, 0.2])

  def step():
    clock[0] += next(durations)

  clock_module = types.SimpleNamespace(perf_counter=lambda: clock[0], sleep=lambda seconds: None)
  monkeypatch.setattr(benchmark, "time", clock_module)   # the pauses between rounds
  monkeypatch.setattr(timing, "time", clock_module)      # the timed calls
  monkeypatch.setattr(benchmark, "RUNNERS", {"jax": lambda *args: benchmark.Runner(step, 1.5)})
  options = benchmark.parse_args(["--repeats", "3", "--warmup", "2", "--settle-s", "0"])
  (result,) = benchmark.measure("mobilenet_v3_small", "infer", 4, 32, "float32", ["jax"], options,
                                {"float32": 10e9}, 125_000_000)
  assert result.seconds == pytest.approx([0.5, 0.1, 0.2])
  assert result.images_per_s == pytest.approx(20.0)
  assert result.latency_ms == pytest.approx(200.0)
  assert result.model_gflops == pytest.approx(1.0)
  assert result.peak_fraction == pytest.approx(0.5)
  assert result.compile_s == 1.5


def test_table_prints_speedups(report, capsys):
  benchmark.print_table(report[0], ["jax", "torch"])
  out = capsys.readouterr().out
  assert "mobilenet_v3_small" in out and "vs torch" in out and "latency b1" in out


def test_bad_flags_are_rejected(capsys):
  for argv in (["--models", "v4"], ["--dtype", "float16"], ["--resolution", "16"],
               ["--repeats", "0"], ["--batch", ""]):
    with pytest.raises(SystemExit):
      benchmark.parse_args(argv)
  assert "expected a comma-separated list" in capsys.readouterr().err


def test_imports_without_tensorflow_ml_collections_torch_or_keras():
  code = ("import sys\n"
          "for name in ('tensorflow', 'tensorflow_datasets', 'ml_collections', 'keras', 'torch'):\n"
          "  sys.modules[name] = None\n"
          "from mobilenet_jax.tools import benchmark\n"
          "print(benchmark.parse_args(['--models', 'v2']).models)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "['v2']"

