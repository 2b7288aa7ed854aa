"""Image folders shipped as one archive (`.tar.gz`, `.tgz`, `.tar`, `.zip`), extracted once into a cache.

    config.dataset.name = "folder"
    config.dataset.data_dir = "/data/cifar10-jpeg.tar.gz"    # holds cifar10/{train,test}/<class>/*.jpg

The archive is extracted on first use into
`$XDG_CACHE_HOME/mobilenet_jax/datasets/<archive name>-<path key>-<version key>/` (`~/.cache/...`; the
path key is the archive's path, the version key changes when its size or modification time does), into
a temporary folder first and renamed when complete, so a run that is killed half-way, or several
processes starting at once, never read a partial copy. The image-folder root is the extracted folder,
or its single sub-folder, whichever holds `train/`.

Untrusted archives, as Python's tarfile and zipfile documentation advise (the `data` extraction
filter; sizes checked before extracting, against decompression bombs):
- before writing anything, the members' declared sizes are summed: an archive that would expand more
  than `MAX_EXPANSION` times its own size or past the free disk space is refused with a message. The
  ratio is Apache POI's zip-bomb guard (`ZipSecureFile`'s minimum inflate ratio 0.01); image
  datasets barely compress. `MOBILENET_JAX_MAX_EXPANSION` sets another ratio;
- a temporary folder left by a killed extraction (its name holds the host and pid that made it) is
  removed by the next extraction on that host once that process is gone;
- a new version of an archive replaces the previous extraction of the same archive path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import zipfile
import zlib

from mobilenet_jax.user_cache import user_cache_dir

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)


def cache_root() -> str:
  return os.path.join(user_cache_dir(), "datasets")


# Uncompressed bytes per archive byte above which an archive is refused (zip-bomb guard).
MAX_EXPANSION = 100.0
MAX_EXPANSION_ENV = "MOBILENET_JAX_MAX_EXPANSION"


class ArchiveTooLargeError(ValueError):
  """The archive would expand past the expansion limit or the free disk space."""


def _key(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()[:8]


_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, zlib.error)


def _unreadable(archive: str, error: BaseException) -> ValueError:
  return ValueError(f"dataset archive {archive} cannot be extracted ({type(error).__name__}: "
                    f"{error}); it may be truncated or not an archive: make it again")


def _declared_size(archive: str) -> int:
  """The sum of the members' uncompressed sizes, as the archive declares them (a tar's are exact;
  zipfile never writes past a member's declared size)."""
  if archive.lower().endswith(".zip"):
    with zipfile.ZipFile(archive) as zipped:
      return sum(info.file_size for info in zipped.infolist())
  with tarfile.open(archive) as tar:
    return sum(member.size for member in tar if member.isfile())


def _check_size(archive: str, directory: str) -> None:
  limit = float(os.environ.get(MAX_EXPANSION_ENV) or MAX_EXPANSION)
  try:
    size = _declared_size(archive)
  except _READ_ERRORS as e:
    raise _unreadable(archive, e) from None
  compressed = os.path.getsize(archive)
  free = shutil.disk_usage(directory).free
  if size > limit * max(compressed, 1):
    raise ArchiveTooLargeError(
        f"{archive}: its files would take {size:,} bytes, {size / max(compressed, 1):.0f} times the "
        f"archive's {compressed:,} (the limit is {limit:g} times: image datasets barely compress). "
        f"If you trust it, extract it yourself and pass the folder, or set {MAX_EXPANSION_ENV}")
  if size > free:
    raise ArchiveTooLargeError(
        f"{archive}: its files would take {size:,} bytes, {directory} has {free:,} free: free "
        "some space, or extract it elsewhere yourself and pass the folder")


def _scratch_prefix(name: str, pid: int | str) -> str:
  return f".{name}-{socket.gethostname()}-{pid}-"


def _remove_stale_scratch(directory: str, name: str) -> None:
  """Removes temporary folders of `name` left by extractions on this host whose process is gone."""
  mine = f".{name}-{socket.gethostname()}-"
  for entry in os.listdir(directory):
    if not entry.startswith(mine):
      continue
    pid = entry[len(mine):].split("-", 1)[0]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def extracted_folder(archive: str, cache_dir: str | None = None) -> str:
  """The folder holding `archive`'s files, extracting it first when this is the first use."""
  stat = os.stat(archive)
  name = os.path.basename(archive)
  directory = cache_dir or cache_root()
  same_path = f"{name}-{_key(os.path.abspath(archive))}-"
  target = os.path.join(directory, same_path + _key(f"{stat.st_size}:{stat.st_mtime_ns}"))
  if os.path.isdir(target):
    return target
  os.makedirs(directory, exist_ok=True)
  _remove_stale_scratch(directory, name)
  _check_size(archive, directory)
  scratch = tempfile.mkdtemp(prefix=_scratch_prefix(name, os.getpid()), dir=directory)
  try:
    try:
      if name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
          zipped.extractall(scratch)
      else:
        with tarfile.open(archive) as tar:
          tar.extractall(scratch, filter="data")  # no absolute paths, links out or device files
    except _READ_ERRORS as e:
      raise _unreadable(archive, e) from None
    try:
      os.rename(scratch, target)
    except OSError:  # another process finished first: use its copy
      if not os.path.isdir(target):
        raise
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  for entry in os.listdir(directory):  # earlier versions of this archive
    if entry.startswith(same_path) and entry != os.path.basename(target):
      shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)
  return target


def folder_root(path: str) -> str:
  """`path` itself for a folder; for an archive, the extracted folder (or its single sub-folder)
  that holds `train/`."""
  if not is_archive(path):
    return path
  folder = extracted_folder(path)
  if os.path.isdir(os.path.join(folder, "train")):
    return folder
  children = [c for c in os.listdir(folder) if os.path.isdir(os.path.join(folder, c))]
  if len(children) == 1 and os.path.isdir(os.path.join(folder, children[0], "train")):
    return os.path.join(folder, children[0])
  return folder  # FolderSource then says that train/ is missing
