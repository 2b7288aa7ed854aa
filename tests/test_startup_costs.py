"""experiments/startup_costs.py writes its runs to a JSON file (`--json`), for docs/startup.md's
figures: the command, the machine and every run's seconds with their median."""

import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import startup_costs  # noqa: E402


def test_json_records_the_command_machine_and_runs(tmp_path, monkeypatch, capsys):
  # The measuring child processes answer with scripted seconds: 1, 2, 3, 4 in launch order.
  seconds = itertools.count(1)
  children = []

  def child(command, **kwargs):
    children.append(command[-2:])
    return subprocess.CompletedProcess(command, 0, stdout=f"SECONDS {next(seconds)}\n")

  monkeypatch.setattr(startup_costs.subprocess, "run", child)
  out = tmp_path / "results" / "startup.json"
  args = ["--studies", "eager_init", "--repeats", "2", "--json", str(out)]
  startup_costs.main(args)
  assert children == [["eager_init", "eager"], ["eager_init", "jit"]] * 2   # alternating variants
  record = json.loads(out.read_text())
  assert record["command"] == "python experiments/startup_costs.py " + " ".join(args)
  assert record["machine"]["cpus"] == os.cpu_count() and "jax" in record["machine"]
  assert record["results"] == {"eager_init": {"variants": {
      "eager": {"median_s": 2.0, "runs_s": [1.0, 3.0]},
      "jitted": {"median_s": 3.0, "runs_s": [2.0, 4.0]}}}}
  assert "eager:  2.00 s  jitted:  3.00 s" in capsys.readouterr().out   # the printed medians
