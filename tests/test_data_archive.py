"""Archive datasets on disk: a decompression bomb is refused before anything is written, a killed
extraction's scratch folder is removed by the next start, and a changed archive replaces its
previous extraction. Through `folder.FolderSource`, what `dataset.name="folder"` runs."""

import io
import os
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from mobilenet_jax.data import archive, folder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  return tmp_path / "cache" / "mobilenet_jax" / "datasets"


def _png(value):
  out = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(out, format="PNG")
  return out.getvalue()


def write_archive(path, files):
  """A .tar.gz holding `files` ({name: bytes}) under `data/`."""
  with tarfile.open(path, "w:gz") as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(f"data/{name}")
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return str(path)


def image_folder(value=0):
  return {f"{split}/{c}/{i}.png": _png(value) for split in ("train", "test") for c in "ab"
          for i in range(2)}


def test_decompression_bomb_is_refused_before_writing(tmp_path, cache):
  files = {**image_folder(), "train/a/padding.png": bytes(20 * 2**20)}  # 20 MiB of zeros
  path = write_archive(tmp_path / "bomb.tar.gz", files)
  assert os.path.getsize(path) < 200_000
  with pytest.raises(archive.ArchiveTooLargeError, match=r"bomb.tar.gz: its files would take "
                     r"20,9\d\d,\d\d\d bytes, \d+ times the archive's .*MOBILENET_JAX_MAX_EXPANSION"):
    folder.FolderSource(path)
  assert not cache.exists() or os.listdir(cache) == []


def test_the_expansion_limit_can_be_raised(tmp_path, monkeypatch):
  files = {**image_folder(), "train/a/padding.png": bytes(2 * 2**20)}
  path = write_archive(tmp_path / "big.tar.gz", files)
  monkeypatch.setenv(archive.MAX_EXPANSION_ENV, "100000")
  assert folder.FolderSource(path).num_classes == 2


def test_scratch_folder_of_a_killed_extraction_is_removed_by_the_next_start(tmp_path, cache):
  path = write_archive(tmp_path / "digits.tar.gz", image_folder())
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  host = socket.gethostname()
  left = cache / f".digits.tar.gz-{host}-{dead.pid}-k1ll3d"        # a killed extraction's
  running = cache / f".digits.tar.gz-{host}-{os.getpid()}-runn1ng"  # one still extracting
  for scratch in (left, running):
    os.makedirs(scratch / "data" / "train")
    (scratch / "data" / "train" / "x.png").write_bytes(_png(1))
  folder.FolderSource(path)
  assert not left.exists() and running.exists()


def test_a_changed_archive_replaces_its_previous_extraction(tmp_path, cache):
  path = write_archive(tmp_path / "set.tar.gz", image_folder(0))
  first = folder.FolderSource(path).root
  os.makedirs(tmp_path / "elsewhere")
  other = write_archive(tmp_path / "elsewhere" / "set.tar.gz", image_folder(5))  # same name
  folder.FolderSource(other)
  write_archive(path, image_folder(9))                            # the archive changes
  os.utime(path, ns=(10**18, 10**18))
  second = folder.FolderSource(path).root
  assert second != first and not os.path.exists(first)
  names = sorted(os.listdir(cache))
  assert len(names) == 2, names   # this archive's newest extraction, and the other archive's
