"""A directory made really read-only, for the read-only workdir tests (no patched `open`).

Root ignores file modes, so `chmod` alone does not stop it (the tests run as root in CI
containers). The first mechanism that works here is used, and checked by trying to create a file:
- not root: `chmod a-w` of the directory and everything below it;
- root with CAP_SYS_ADMIN: a read-only bind mount of the directory on itself (writes: EROFS);
- root with CAP_LINUX_IMMUTABLE, on ext4/xfs/btrfs: the immutable attribute, `chattr -R +i` (EPERM).
Where none works, `make()` raises `Unavailable` saying why; tests skip with that reason.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time


class Unavailable(Exception):
  """No mechanism makes a directory read-only for this process here."""


def _can_create_in(path: str) -> bool:
  probe = os.path.join(path, ".read_only_probe")
  try:
    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
  except OSError:
    return False
  os.remove(probe)
  return True


def _run(*command: str) -> str:
  """'' when the command succeeded, else why not."""
  try:
    done = subprocess.run(command, capture_output=True, text=True)
  except OSError as e:  # the command is not installed
    return f"{command[0]}: {e}"
  return "" if done.returncode == 0 else f"{' '.join(command)}: {done.stderr.strip()}"


class ReadOnly:
  """`with ReadOnly(path) as read_only: read_only.make()`: `path` is read-only until the block
  ends (also mid-run, from another thread), then writable again so the test can clean it up."""

  def __init__(self, path: str):
    self.path = path
    self.how = ""

  def __enter__(self) -> "ReadOnly":
    return self

  def __exit__(self, *exc) -> None:
    self.undo()

  def _chmod(self, remove_write: bool) -> None:
    for root, dirs, files in os.walk(self.path, topdown=False):
      for name in [*files, *dirs, None]:
        target = root if name is None else os.path.join(root, name)
        mode = os.lstat(target).st_mode
        if stat.S_ISLNK(mode):
          continue
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        os.chmod(target, (mode & ~bits) if remove_write else (mode | stat.S_IWUSR))

  def _bind_mount_read_only(self) -> str:
    error = _run("mount", "--bind", self.path, self.path)
    if error:
      return error
    self.how = "bind mount"
    for _ in range(50):   # EBUSY while a file below is open for writing: retry
      error = _run("mount", "-o", "remount,bind,ro", self.path)
      if not error:
        return ""
      time.sleep(0.1)
    return error

  def _immutable(self) -> str:
    self.how = "chattr"
    return _run("chattr", "-R", "+i", self.path)

  def _modes(self) -> str:
    self.how = "chmod"
    self._chmod(remove_write=True)
    return ""

  def make(self) -> str:
    """Makes `path` read-only; returns the mechanism used."""
    if os.geteuid() != 0:
      mechanisms = [self._modes]
      reasons = []
    else:
      mechanisms = [self._bind_mount_read_only, self._immutable]
      reasons = ["running as root, whom file modes do not stop"]
    for mechanism in mechanisms:
      error = mechanism()
      if not error and _can_create_in(self.path):
        error = f"{self.how} did not stop writes"
      if not error:
        return self.how
      reasons.append(error)
      self.undo()
    raise Unavailable("cannot make a directory read-only here: " + "; ".join(reasons))

  def undo(self) -> None:
    how, self.how = self.how, ""
    if how == "chmod":
      self._chmod(remove_write=False)
    elif how == "bind mount":
      _run("umount", self.path)
    elif how == "chattr":
      _run("chattr", "-R", "-i", self.path)
