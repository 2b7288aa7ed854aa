"""`python -m mobilenet_jax.launch` as a user runs it: what the network sees of a local launch, and
what is left when the launcher is killed.

One 2-process job (tests/reliability_run.py: the real job, slowed down by a delay per step): while it
trains, every socket its processes listen on is read from /proc; then the launcher is SIGKILLed and
its processes must be gone within seconds.
"""

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mobilenet_jax import train

import fast_compile
import job_runs

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
GONE_WITHIN_S = 10

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc")


def _children(pid):
  """Pids of the processes whose parent is `pid` (from /proc/<pid>/stat)."""
  found = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        found.append(int(name))
  return found


def _alive(pid):
  """Running (not gone, not a zombie waiting for its reaper)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def _address(hex_address):
  """/proc/net/tcp{,6}'s address (little-endian 32-bit words) -> ip_address (IPv4 for an
  IPv4-mapped IPv6 one: gRPC's dual-stack socket on 127.0.0.1 reads ::ffff:127.0.0.1)."""
  raw = bytes.fromhex(hex_address)
  address = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
  return getattr(address, "ipv4_mapped", None) or address


def listening(pid):
  """[(address, port)] of the TCP sockets process `pid` listens on (state 0A in /proc/net/tcp)."""
  inodes = set()
  for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
      target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
      continue
    if target.startswith("socket:["):
      inodes.add(target[8:-1])
  found = []
  for table in ("tcp", "tcp6"):
    with open(f"/proc/{pid}/net/{table}") as f:
      for line in f.readlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:
          address, port = fields[1].split(":")
          found.append((_address(address), int(port, 16)))
  return found


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("launch")
  workdir, ready = str(tmp / "run"), str(tmp / "ready")
  overrides = {**job_runs.JOB_OVERRIDES, "num_train_steps": 200, "eval_batch_size": 64,
               "checkpoint_every_steps": 0, "dataset.data_dir": str(tmp / "tfds")}
  env = fast_compile.child_env(
      JAX_COMPILATION_CACHE_DIR=str(tmp / "xla_cache"), RELIABILITY_STEP_DELAY="0.5",
      RELIABILITY_READY_FILE=ready,
      PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]))
  log = open(tmp / "launch.log", "w")
  launcher = subprocess.Popen(
      [sys.executable, "-m", "mobilenet_jax.launch", "--processes=2", "--devices_per_process=1",
       "--heartbeat_timeout_s=10", "--main_module=reliability_run", "--",
       f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())],
      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  log.close()
  output = lambda: (tmp / "launch.log").read_text()
  children = []
  try:
    # Both processes have trained a step: the coordinator and gloo's connections are up.
    job_runs.wait_until(lambda: os.path.exists(ready), [launcher], "the first step",
                        output=output)
    job_runs.wait_until(lambda: len(_metrics(workdir)) >= 2, [launcher],
                        "the second logged step", output=output)
    children = _children(launcher.pid)
    sockets = {pid: listening(pid) for pid in children}
    port = int(re.search(r"coordinator 127\.0\.0\.1:(\d+)", output()).group(1))
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    killed = time.monotonic()
    while any(_alive(pid) for pid in children) and time.monotonic() - killed < GONE_WITHIN_S:
      time.sleep(0.1)
    left = [pid for pid in children if _alive(pid)]
    return {"children": children, "sockets": sockets, "port": port, "left": left,
            "output": output()}
  finally:
    for pid in children:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    if launcher.poll() is None:
      launcher.kill()


def _metrics(workdir):
  path = os.path.join(workdir, train.METRICS_FILE)
  return train.read_metrics(workdir) if os.path.exists(path) else []


def test_local_launch_listens_on_127_0_0_1_only(launched):
  sockets = launched["sockets"]
  assert len(sockets) == 2, launched["output"][-3000:]
  everything = [s for found in sockets.values() for s in found]
  assert (ipaddress.ip_address("127.0.0.1"), launched["port"]) in everything, sockets
  assert all(address == ipaddress.ip_address("127.0.0.1") for address, _ in everything), sockets


def test_processes_die_with_a_sigkilled_launcher(launched):
  assert launched["left"] == [], launched["output"][-3000:]


def test_launcher_output_has_no_gloo_lines_and_a_consistent_first_step_line(launched):
  output = launched["output"]
  assert "[Gloo]" not in output, output[-3000:]
  line = re.search(r"first step done ([0-9.]+)s after its compilation began: traced in ([0-9.]+)s,"
                   r" compiled \(or loaded from the compilation cache\) in ([0-9.]+)s", output)
  assert line, output[-3000:]
  total, traced, compiled = (float(x) for x in line.groups())
  assert total >= traced + compiled - 0.15


def test_commands_print_no_tensorflow_info_lines():
  """TensorFlow's oneDNN notice (printed twice at its import) is an INFO line: hidden; its errors
  still show (TF_CPP_MIN_LOG_LEVEL=2, unless the user set it)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "TF_ENABLE_ONEDNN"))}
  result = subprocess.run([sys.executable, "-m", "mobilenet_jax.evaluate", "--help"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "import tensorflow" not in result.stderr and "oneDNN" not in result.stderr, result.stderr
