"""One job per workdir: an advisory lock on `workdir/.lock`, held by process 0 while the job runs.

The lock is `flock(2)` on an open file, the mechanism of the `filelock` package that pip and the
Hugging Face cache use on Unix: the kernel releases it when its process ends, however it ends, so a
job killed with SIGKILL leaves no stale lock that blocks the next start (a pid file alone would).
The file keeps the holder's pid for the refusal's message; it is emptied on release. On a file
system without flock support (some network file systems) the job runs unlocked, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from typing import Optional

LOCK_FILE = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another running job holds the workdir."""


class WorkdirLock:
  """`acquire()` takes the lock or raises WorkdirBusyError naming the holder; `release()` frees it."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def acquire(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid stays
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirBusyError(
            f"another job (pid {holder}) is running in workdir {self.workdir}: wait for it to "
            "end or stop it, or pass another --workdir") from None
      logging.warning("cannot lock %s (%s): nothing stops a second job on this workdir",
                      self.path, e)
      return
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass  # a read-only or full workdir: the lock goes with the file descriptor all the same
    finally:
      os.close(fd)
