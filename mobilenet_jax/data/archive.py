"""Image folders shipped as one archive (`.tar.gz`, `.tgz`, `.tar`, `.zip`), extracted once into a cache.

    config.dataset.name = "folder"
    config.dataset.data_dir = "/data/cifar10-jpeg.tar.gz"    # holds cifar10/{train,test}/<class>/*.jpg

The archive is extracted on first use into `$XDG_CACHE_HOME/mobilenet_jax/datasets/<archive name>-<key>/`
(`~/.cache/...`; the key changes when the archive's size or modification time does), into a temporary
folder first and renamed when complete, so a run that is killed half-way, or several processes starting
at once, never read a partial copy. The image-folder root is the extracted folder, or its single
sub-folder, whichever holds `train/`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
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


def extracted_folder(archive: str, cache_dir: str | None = None) -> str:
  """The folder holding `archive`'s files, extracting it first when this is the first use."""
  stat = os.stat(archive)
  name = os.path.basename(archive)
  key = hashlib.sha1(f"{os.path.abspath(archive)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
                     ).hexdigest()[:12]
  target = os.path.join(cache_dir or cache_root(), f"{name}-{key}")
  if os.path.isdir(target):
    return target
  os.makedirs(os.path.dirname(target), exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(target))
  try:
    try:
      if name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
          zipped.extractall(scratch)
      else:
        with tarfile.open(archive) as tar:
          tar.extractall(scratch, filter="data")  # no absolute paths, links out or device files
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, zlib.error) as e:
      raise ValueError(f"dataset archive {archive} cannot be extracted ({type(e).__name__}: {e}); "
                       "it may be truncated or not an archive: make it again") from None
    try:
      os.rename(scratch, target)
    except OSError:  # another process finished first: use its copy
      if not os.path.isdir(target):
        raise
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
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
