"""The training job as N processes on this machine, joined like the hosts of a pod.

    python -m mobilenet_jax.launch --processes=2 --devices_per_process=4 -- --workdir=runs/mh \
        [main's other flags]

Starts N `python -m mobilenet_jax.main` processes, each with K simulated CPU devices, joined by
`jax.distributed.initialize(coordinator_address="127.0.0.1:PORT", num_processes=N, process_id=i)`
and JAX's CPU collectives across processes (gloo): the multi-host code paths (coordinator service,
each host's share of the data, Orbax's multi-process checkpoints, preemption, a dead peer) run for
real, without a pod. On a pod, Slurm or MPI run `mobilenet_jax.main` itself on every host
(docs/multihost.md).

Process 0's output is this command's; the other processes' lines are prefixed `[process i]`
(gloo's "[Gloo] Rank i is connected to ..." lines are left out).
SIGTERM, SIGHUP (a closed terminal) or Ctrl-C to this command sends SIGTERM to every process: all
save the same step and exit 0 (a second Ctrl-C kills them). When this command dies without a word
(SIGKILL), the kernel kills its processes (`PR_SET_PDEATHSIG`, as `torch.multiprocessing.spawn` ties its
workers to their parent): no orphan trains on and holds the workdir. When a process fails,
the others stop on their own once JAX's coordination service misses its heartbeats
(`--heartbeat_timeout_s`); this command waits that long plus a margin, kills what is left, and
exits non-zero.

The coordinator listens on 127.0.0.1 only (JAX's default binds every interface): the processes of
a local launch talk to each other only.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, IO, Optional, Sequence

from mobilenet_jax import extras

if __name__ == "__main__":
  extras.require("python -m mobilenet_jax.launch", "train")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("processes", 2, "Number of processes (simulated hosts).", lower_bound=1)
flags.DEFINE_integer("devices_per_process", 1, "Simulated CPU devices of each process.",
                     lower_bound=1)
flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1; 0: a free one.", lower_bound=0)
flags.DEFINE_integer("heartbeat_timeout_s", 30, "A process silent this long is dead: the others "
                     "stop with an error.", lower_bound=1)
flags.DEFINE_string("main_module", "mobilenet_jax.main", "The module each process runs "
                    "(python -m); it must accept main's multi-host flags.")

# After one process failed: how much longer than the heartbeat timeout the others get to stop.
STOP_MARGIN_S = 30


def free_port() -> int:
  """A TCP port of 127.0.0.1 that no one listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def port_is_free(port: int) -> bool:
  """Whether the coordinator can listen on `port` of 127.0.0.1 now."""
  with socket.socket() as s:
    try:
      s.bind(("127.0.0.1", port))
    except OSError:
      return False
  return True


def process_env(devices_per_process: int, base: Optional[dict[str, str]] = None) -> dict[str, str]:
  """One process's environment: CPU only, K devices, gloo collectives between processes."""
  env = dict(os.environ if base is None else base)
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process),
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  return env


def process_command(main_args: Sequence[str], process_id: int, processes: int, port: int,
                    heartbeat_timeout_s: int, main_module: str = "mobilenet_jax.main") -> list[str]:
  return [sys.executable, "-m", main_module, f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={processes}", f"--process_id={process_id}",
          f"--heartbeat_timeout_s={heartbeat_timeout_s}", *main_args]


# Lines that gloo prints when its processes connect (one per process and communicator).
GLOO_CONNECTED = re.compile(r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


# Run first in each child, a fresh interpreter with no threads, then replaced by the job (execv keeps
# the death signal): a `preexec_fn` would run Python between fork and exec in the launcher, which is
# unsafe once the launcher's process has threads (JAX's).
_DIE_WITH_PARENT = "\n".join((
    "import ctypes, os, signal, sys",
    "try:",
    f"  ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)",
    "except (OSError, AttributeError):",   # not Linux: the launcher's signal forwarding only
    "  pass",
    "if os.getppid() != int(sys.argv[1]):",  # the launcher died before prctl: nobody would kill it
    "  os._exit(1)",
    "os.execv(sys.argv[2], sys.argv[2:])"))


def _dying_with_this_process(command: list[str]) -> list[str]:
  """`command`, run so that the kernel kills it when this process ends (Linux PR_SET_PDEATHSIG)."""
  return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def start(main_args: Sequence[str], *, processes: int, devices_per_process: int,
          port: int = 0, heartbeat_timeout_s: int = 30, main_module: str = "mobilenet_jax.main",
          env: Optional[dict[str, str]] = None,
          output: Callable[[int], Optional[IO]] = lambda i: None,
          cwd: Optional[str] = None) -> list[subprocess.Popen]:
  """Starts the N processes (each the leader of its own process group); `output(i)`: where
  process i writes stdout and stderr (None: this process's own, subprocess.PIPE: a pipe)."""
  port = port or free_port()
  env = process_env(devices_per_process, env)
  procs = []
  try:
    for i in range(processes):
      command = process_command(main_args, i, processes, port, heartbeat_timeout_s, main_module)
      procs.append(subprocess.Popen(
          _dying_with_this_process(list(command)), env=env, cwd=cwd, stdout=output(i),
          stderr=subprocess.STDOUT if output(i) else None, text=True, start_new_session=True))
  except BaseException:
    kill(procs)
    raise
  return procs


def kill(procs: Sequence[subprocess.Popen], signum: int = signal.SIGKILL) -> None:
  """Sends `signum` to each running process's group."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signum)
      except ProcessLookupError:
        pass


def describe(returncode: int) -> str:
  if returncode < 0:
    return f"was killed by {signal.Signals(-returncode).name}"
  return f"exited with status {returncode}"


def wait(procs: Sequence[subprocess.Popen], stop_after_failure_s: float,
         log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
         ) -> tuple[list[int], Optional[int]]:
  """Waits for every process; once one has failed, kills those still running
  `stop_after_failure_s` later. Returns the exit codes (negative: killed by that signal) and the
  index of the first process that failed (None: none did)."""
  deadline = first_failed = None
  codes: dict[int, int] = {}
  while len(codes) < len(procs):
    for i, p in enumerate(procs):
      if i not in codes and p.poll() is not None:
        codes[i] = p.returncode
        if p.returncode:
          log(f"launch: process {i} {describe(p.returncode)}")
          if first_failed is None:
            first_failed, deadline = i, time.monotonic() + stop_after_failure_s
    if deadline is not None and time.monotonic() > deadline and len(codes) < len(procs):
      log(f"launch: processes {sorted(set(range(len(procs))) - set(codes))} still running "
          f"{stop_after_failure_s:.0f}s after a failure: killing them")
      kill(procs)
      deadline = None
    time.sleep(0.1)
  return [codes[i] for i in range(len(procs))], first_failed


def _prefix_lines(stream: IO, prefix: str, out: IO) -> None:
  for line in stream:
    if not GLOO_CONNECTED.match(line):
      out.write(prefix + line)
      out.flush()


def main(argv: list[str]) -> int:
  main_args = argv[1:]
  if not any(a.startswith("--workdir") for a in main_args):
    raise app.UsageError("pass main's flags after --, at least --workdir: python -m "
                         "mobilenet_jax.launch --processes=2 -- --workdir=runs/mh")
  if FLAGS.port and not port_is_free(FLAGS.port):   # else JAX retries binding it for a minute
    print(f"launch: error: port {FLAGS.port} of 127.0.0.1 is in use; pass another --port, or "
          "none to use a free one", file=sys.stderr)
    return 1
  port = FLAGS.port or free_port()
  print(f"launch: {FLAGS.processes} processes x {FLAGS.devices_per_process} CPU devices, "
        f"coordinator 127.0.0.1:{port}", file=sys.stderr, flush=True)
  procs = start(main_args, processes=FLAGS.processes, devices_per_process=FLAGS.devices_per_process,
                port=port, heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
                main_module=FLAGS.main_module, output=lambda i: subprocess.PIPE)
  for i, p in enumerate(procs):
    threading.Thread(target=_prefix_lines, daemon=True, args=(
        p.stdout, f"[process {i}] " if i else "", sys.stderr if i else sys.stdout)).start()
  interrupts = []

  def forward(signum, frame):
    del frame
    interrupts.append(signum)
    # The first signal is a preemption (every process saves and exits 0); a second Ctrl-C kills.
    kill(procs, signal.SIGKILL if len(interrupts) > 1 and signum == signal.SIGINT
         else signal.SIGTERM)

  for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, forward)
  try:
    codes, first_failed = wait(procs, FLAGS.heartbeat_timeout_s + STOP_MARGIN_S)
  finally:
    kill(procs)
  if first_failed is None:
    return 0
  code = codes[first_failed]
  return 128 - code if code < 0 else code  # a shell's status for "killed by signal -code"


if __name__ == "__main__":
  app.run(main)
