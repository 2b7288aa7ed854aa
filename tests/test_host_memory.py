"""host_memory: the GLIBC_TUNABLES handling and the restart that keeps freed memory in the process."""

import os
import subprocess
import sys
import textwrap

import pytest

from mobilenet_jax.tools import host_memory

TUNABLES = list(host_memory.RETAIN_TUNABLES)


def test_environment_with_retained_memory_keeps_other_tunables():
  env = host_memory.environment_with_retained_memory(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.rtld.nns=8", "HOME": "/x"})
  assert env["GLIBC_TUNABLES"].split(":") == ["glibc.rtld.nns=8", *TUNABLES]
  assert env["HOME"] == "/x"
  assert host_memory.memory_retained(env)
  assert host_memory.environment_with_retained_memory(env) == env   # idempotent
  assert host_memory.environment_with_retained_memory({})["GLIBC_TUNABLES"] == ":".join(TUNABLES)
  assert not host_memory.memory_retained({"GLIBC_TUNABLES": ":".join(TUNABLES[1:])})
  assert not host_memory.memory_retained({})


PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    from mobilenet_jax.tools import host_memory
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1:] == ["restart"]:
      host_memory.reexec_with_retained_memory(["-m", "probe", *sys.argv[1:]])
    faults = []
    for _ in range(3):   # a 256 MiB block, malloc'd, touched and freed, as XLA:CPU does per call
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      block = libc.malloc(256 << 20)
      ctypes.memset(block, 1, 256 << 20)
      libc.free(block)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(host_memory.memory_retained(), *faults)
    """)
# Touching a fresh 256 MiB block takes 65,536 page faults in 4 KiB pages, 128 in 2 MiB pages
# (transparent huge pages), a few less where its first page was touched before.
MIN_FAULTS_PER_BLOCK = 3 * (256 << 20) // (2 << 20) // 4


@pytest.mark.skipif(not host_memory.glibc_tunables_supported(), reason="needs Linux and glibc")
def test_restart_retains_freed_memory_and_page_faults_once(tmp_path):
  (tmp_path / "probe.py").write_text(PROBE)
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])

  def run(*argv):
    out = subprocess.run([sys.executable, "-m", "probe", *argv], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", [int(n) for n in out[1:]]

  # Counted per block, so that the assertions hold whatever the page size: by default every block
  # is mapped afresh and faults in again; kept in the process, only the first one faults.
  requested, default = run("stay")
  assert not requested
  assert min(default) >= MIN_FAULTS_PER_BLOCK, default
  assert min(default[1:]) > 0.5 * default[0], default
  requested, retained = run("restart")
  assert requested
  assert retained[0] >= MIN_FAULTS_PER_BLOCK, retained
  assert max(retained[1:]) < 0.1 * retained[0], retained
