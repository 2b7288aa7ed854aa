"""A pytest plugin that prints what each test file costs in CPU seconds (not a test).

    python -m pytest -p cpu_costs

Each process (the xdist workers) records, per test, the CPU seconds of itself and of the child
processes it waited for (`resource.getrusage`), setup and teardown included (a module's fixtures count
for its first test), and its wall seconds. At the end the controller prints the files, costliest first.
CPU seconds hardly move when the machine is shared; wall seconds do.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import shutil
import tempfile
import time

import pytest

_FOLDER_VARIABLE = "MOBILENET_JAX_TEST_COSTS"
_costs: dict[str, tuple[float, float]] = {}


def _cpu_seconds() -> float:
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_configure(config):
  if not os.environ.get(_FOLDER_VARIABLE):  # the controller: workers inherit the folder
    os.environ[_FOLDER_VARIABLE] = tempfile.mkdtemp(prefix="mobilenet_jax_test_costs_")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  cpu, wall = _cpu_seconds(), time.monotonic()
  yield
  _costs[item.nodeid] = (_cpu_seconds() - cpu, time.monotonic() - wall)


def pytest_sessionfinish(session):
  worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
  with open(os.path.join(os.environ[_FOLDER_VARIABLE], f"{worker}.json"), "w") as f:
    json.dump(_costs, f)


def pytest_terminal_summary(terminalreporter):
  if os.environ.get("PYTEST_XDIST_WORKER"):
    return
  folder = os.environ[_FOLDER_VARIABLE]
  files = collections.defaultdict(lambda: [0.0, 0.0, 0])
  for name in os.listdir(folder):
    with open(os.path.join(folder, name)) as f:
      for nodeid, (cpu, wall) in json.load(f).items():
        row = files[nodeid.split("::")[0]]
        row[0], row[1], row[2] = row[0] + cpu, row[1] + wall, row[2] + 1
  shutil.rmtree(folder, ignore_errors=True)
  write = terminalreporter.write_line
  write(f"CPU seconds per test file (all files: {sum(r[0] for r in files.values()):.0f} s)")
  for path, (cpu, wall, count) in sorted(files.items(), key=lambda item: -item[1][0]):
    write(f"{cpu:8.0f} s CPU {wall:8.0f} s wall {count:5d} tests  {path}")
