"""The ablation notebook runs top to bottom in quick mode and writes well-formed results.

The notebook runs in its own kernel (nbclient, the `python3` kernel of this environment) with
ABLATION_QUICK=1 and its outputs in a temp folder; the committed results must stay untouched.
"""

import base64
import csv
import io
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
sys.path.insert(0, EXPERIMENTS)
import expansion_ablation as ea  # noqa: E402
from job_runs import file_digests  # noqa: E402

NOTEBOOK = os.path.join(EXPERIMENTS, "expansion_ablation.ipynb")
CIFAR_RESULTS = os.path.join(ea.COMMITTED_RESULTS, "cifar10")
NUMERIC = ("params", "madds", "train_peak_mib", "train_temp_mib", "eval_peak_mib",
           "train_images_per_sec", "infer_images_per_sec", "top1_mean", "top1_std", "top1_ci95")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  out = tmp_path_factory.mktemp("ablation_out")
  committed_before = file_digests(ea.COMMITTED_RESULTS)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  with pytest.MonkeyPatch.context() as env:  # the kernel inherits this process's environment
    env.setenv("ABLATION_QUICK", "1")
    env.setenv("ABLATION_OUT", str(out))
    env.setenv("ABLATION_WORKDIR", str(tmp_path_factory.mktemp("ablation_runs")))
    env.setenv("JAX_PLATFORMS", "cpu")
    env.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": EXPERIMENTS}})
    client.execute()
  assert file_digests(ea.COMMITTED_RESULTS) == committed_before
  return notebook, str(out)


def _rows(out, study):
  with open(os.path.join(out, f"{study}.csv")) as f:
    return list(csv.DictReader(f))


def _is_png(data: bytes) -> bool:
  from PIL import Image
  image = Image.open(io.BytesIO(data))
  return image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200


def test_expansion_csv_has_one_row_per_t(executed):
  _, out = executed
  rows = _rows(out, "expansion")
  quick = ea.quick_settings()
  assert [r["t"] for r in rows] == [ea.format_t(t) for t in quick.ts]
  for r in rows:
    assert r["model"] == "mobilenet_v2" and float(r["width"]) == quick.width
    for key in NUMERIC:
      assert math.isfinite(float(r[key])), key
    for key in NUMERIC[:7]:
      assert float(r[key]) > 0, key
    assert 0 <= float(r["top1_mean"]) <= 1 and int(r["seeds"]) == len(quick.seeds)
    assert int(r["train_steps"]) == quick.steps
  small, large = rows  # t=1, t=6: everything the network stores and computes grows with t
  for key in ("params", "madds", "train_temp_mib"):
    assert float(small[key]) < float(large[key]), key


def test_v1_csv_and_json(executed):
  _, out = executed
  rows = _rows(out, "v1")
  quick = ea.quick_settings()
  assert [r["variant"] for r in rows] == [v.label for v in ea.v1_variants(quick.v1_widths,
                                                                          quick.v1_resolutions)]
  assert all(r["model"] == "mobilenet_v1" for r in rows)
  with open(os.path.join(out, "v1.json")) as f:
    stored = json.load(f)
  assert stored["settings"] == quick.to_json()
  assert len(stored["rows"]) == len(rows) and stored["environment"]["backend"] == "cpu"


def test_plots_are_written_and_shown_inline(executed):
  notebook, out = executed
  for study in ea.STUDIES:
    paths = ea.output_paths(study, out)
    for key in ("accuracy_plot", "cost_plot"):
      with open(paths[key], "rb") as f:
        assert _is_png(f.read()), paths[key]
    with open(paths["markdown"]) as f:
      assert f.read().count("\n") == 2 + len(_rows(out, study))
  inline = [base64.b64decode(o["data"]["image/png"]) for cell in notebook.cells
            if cell.cell_type == "code" for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]
  # The CIFAR-10 section shows the committed study (a table, the claim, two plots), trains nothing.
  cifar = ea.load_results("expansion", CIFAR_RESULTS)
  shown = 0 if cifar is None else 1
  assert len(inline) == 2 * (len(ea.STUDIES) + shown) and all(_is_png(d) for d in inline)
  tables = [o["data"]["text/markdown"] for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if "text/markdown" in o.get("data", {})]
  assert len(tables) == len(ea.STUDIES) + shown and "| t=1 |" in tables[0]
  if cifar is not None:
    assert tables[-1] == ea.markdown_table(cifar["rows"])
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert ea.expansion_claim(cifar["rows"]) in printed


def test_parse_ts_and_bad_values():
  assert ea.parse_ts("1, 6,1-6-6-6-2-2-2") == (1.0, 6.0, (1.0, 6.0, 6.0, 6.0, 2.0, 2.0, 2.0))
  with pytest.raises(ValueError, match="t must be >= 1"):
    ea.expansion_variants([0.5], 1.0, 32)
  with pytest.raises(ValueError, match="one value per stage"):
    ea.expansion_variants([(1, 6, 6)], 1.0, 32)
  with pytest.raises(ValueError, match="per-stage patterns"):
    ea.parse_ts("six")
  with pytest.raises(ValueError, match="at least 32x32"):
    ea.v1_variants([1.0], [24])


def test_v1_variants_follow_tables_6_and_7():
  labels = [v.label for v in ea.v1_variants((1.0, 0.5), (48, 32))]
  assert labels == ["alpha=1 rho=48", "alpha=0.5 rho=48", "alpha=1 rho=32"]


def test_training_config_of_a_pattern_is_valid():
  from mobilenet_jax.train.config import validate_config

  settings = ea.quick_settings()
  base = ea.study_base_config(settings, "expansion")
  (variant,) = ea.expansion_variants([(1, 6, 6, 6, 2, 2, 2)], 0.35, 32)
  config = ea.variant_config(base, variant, seed=3)
  validate_config(config, device_count=1)
  assert tuple(config.model.expansion) == variant.expansion and config.seed == 3
  assert config.num_train_steps == settings.steps and config.batch_size == settings.batch_size
  config.model.expansion = (1, 6, 6)
  with pytest.raises(ValueError, match="7 per-stage values"):
    validate_config(config, device_count=1)


def test_quick_mode_refuses_the_committed_results_folder():
  with pytest.raises(ValueError, match="must not replace the committed"):
    ea.check_out_dir(ea.COMMITTED_RESULTS, quick=True)
  ea.check_out_dir(ea.COMMITTED_RESULTS, quick=False)


def test_confidence_interval_is_students_t_over_seeds():
  # t_{0.975, 2} = 4.302653 (two degrees of freedom); s = 0.1, n = 3.
  assert ea.confidence_half_width([0.1, 0.2, 0.3]) == pytest.approx(4.302653 * 0.1 / 3 ** 0.5)
  assert ea.confidence_half_width([0.5]) == 0.0
  a = {"top1_mean": 0.80, "top1_ci95": 0.01}
  assert ea.intervals_separated(a, {"top1_mean": 0.83, "top1_ci95": 0.01})
  assert not ea.intervals_separated(a, {"top1_mean": 0.81, "top1_ci95": 0.01})
  row = {"variant": "t=6", "params": 1, "madds": 1e6, "train_peak_mib": 1, "seeds": 3,
         "infer_images_per_sec": 1, "train_images_per_sec": 1, "top1_mean": 0.2, "top1_std": 0.1,
         "top1_per_seed": "0.1000;0.2000;0.3000"}   # a row written before top1_ci95 existed
  assert "| 20.00 ± 24.84 | 10.00 | 3 |" in ea.markdown_table([row])


def test_several_widths_and_the_small_input_option():
  variants = ea.expansion_variants([1, 6], (0.35, 1.0), 32)
  assert [v.label for v in variants] == ["w=0.35 t=1", "w=0.35 t=6", "w=1 t=1", "w=1 t=6"]
  assert [v.label for v in ea.expansion_variants([1, 6], 0.35, 32)] == ["t=1", "t=6"]
  plain = ea.measure_costs(variants[1], 10)
  small = ea.measure_costs(variants[1], 10, small_input=1)   # the stem at stride 1
  assert small["params"] == plain["params"] and small["madds"] > 3 * plain["madds"]
  assert ea.parse_args(["--width=0.35,1"]).width == (0.35, 1.0)
  assert ea.parse_args(["--width=0.5"]).width == 0.5


def test_expansion_claim_reads_the_intervals():
  def row(t, mean, ci):
    return {"width": 0.35, "t": t, "top1_mean": mean, "top1_ci95": ci}

  rows = [row("1", 0.50, 0.01), row("6", 0.60, 0.01), row("8", 0.61, 0.01), row("10", 0.64, 0.01),
          row("1-6-6-6-2-2-2", 0.9, 0.01)]
  text = ea.expansion_claim(rows)
  assert text.startswith("width 0.35: t in [5, 10] (t=6, t=8, t=10): top-1 60.00-64.00% (spread "
                         "4.00 points); separated by their 95% intervals: t=6 vs t=10, t=8 vs t=10.")
  assert text.endswith("t=1 50.00 ± 1.00% against t=6 60.00 ± 1.00%: separated by their 95% "
                       "intervals.")
  rows[3] = row("10", 0.62, 0.01)
  assert "every pair's 95% intervals overlap" in ea.expansion_claim(rows)
