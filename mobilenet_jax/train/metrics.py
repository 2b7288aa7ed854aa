"""Where training reports go: `workdir/metrics.jsonl`, TensorBoard events, the terminal.

metrics.jsonl has one JSON object per line: one per logging step (`step`, `train_loss`,
`train_accuracy`, `learning_rate`, `grad_norm`, `images_per_sec`, `steps_per_sec`, `elapsed_s`) and
one per evaluation (`step`, `eval_loss`, `eval_top1`, `eval_top5` as fractions, `eval_examples`,
and `ema_eval_*` for the moving-average model). Everything except `TIMING_KEYS` is a deterministic
function of the config and seed: two runs with the same seed write identical values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Optional

METRICS_FILE = "metrics.jsonl"
TIMING_KEYS = ("images_per_sec", "steps_per_sec", "elapsed_s")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl`, in order.

  A last line cut short (no newline, not JSON: what a kill or a full disk leaves mid-write) is
  dropped with a warning, as TensorBoard's event-file reader drops a truncated last record; a bad
  line elsewhere is an error naming the file and line.
  """
  path = os.path.join(workdir, METRICS_FILE)
  with open(path) as f:
    lines = f.readlines()
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if number == len(lines) and not line.endswith("\n"):
        logging.getLogger(__name__).warning(
            "%s: dropped its last line, cut short by an interrupted write: %r", path, line[:80])
        break
      raise ValueError(f"{path}, line {number}: not a JSON record ({e}); delete or repair that "
                       "line, then run again") from None
  return records


def _plain(value: Any) -> Any:
  value = value.item() if hasattr(value, "item") else value
  return float(value) if isinstance(value, float) else value


class MetricWriter:
  """Appends records to metrics.jsonl and TensorBoard (process 0 only; others write nothing).

  `resume_step`: a resumed run first drops records after the checkpoint it restarts from, so the
  file reads as one uninterrupted run (-1: a fresh start, drops every earlier record).
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: Optional[int] = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if not enabled:
      return
    if resume_step is not None and os.path.exists(self.path):
      kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(self.path + ".tmp", self.path)
    if tensorboard:
      from tensorboard.summary import Writer  # lazy: tensorboard is only needed here
      self._tb = Writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      raise OSError(f"could not write metrics to {self.path}: {e} (is the disk full or the workdir "
                    "read-only?): free some space or make the workdir writable, then run the same "
                    "command again to resume from the latest checkpoint") from e
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """A one-line progress bar on a terminal; plain log lines elsewhere (files, notebooks, CI)."""

  def __init__(self, total_steps: int, first_step: int, mode: str = "auto", enabled: bool = True):
    interactive = sys.stderr.isatty() if mode == "auto" else mode == "on"
    self.bar = enabled and interactive
    self.enabled = enabled
    self.total, self.first = total_steps, first_step
    self.start = self.rate_start = time.perf_counter()
    self.last_line = ""
    self.summary = ""

  def compiled(self, step: int) -> None:
    """The first step (with compilation) is done: the ETA counts from here."""
    self.first, self.rate_start = step, time.perf_counter()

  def _eta(self, step: int) -> float:
    done = step - self.first
    elapsed = time.perf_counter() - self.rate_start
    return elapsed / done * (self.total - step) if done > 0 else float("nan")

  def update(self, step: int) -> None:
    """Called every step: redraws the bar (cheap, no device sync)."""
    if not self.bar:
      return
    width = 30
    filled = int(width * step / max(self.total, 1))
    eta = self._eta(step)
    eta_text = _clock(eta) if math.isfinite(eta) else "?"
    line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} {self.summary} "
            f"ETA {eta_text}")
    sys.stderr.write(line.ljust(len(self.last_line)))
    sys.stderr.flush()
    self.last_line = line

  def log(self, step: int, metrics: dict[str, Any]) -> None:
    """Called at each logging step with the averaged metrics."""
    if not self.enabled:
      return
    self.summary = " ".join(
        f"{k.replace('train_', '')} {metrics[k]:.4g}" for k in ("train_loss", "train_accuracy")
        if k in metrics)
    if metrics.get("images_per_sec") is not None:
      self.summary += f" {metrics['images_per_sec']:.0f} img/s"
    if self.bar:
      self.update(step)
    else:
      eta = self._eta(step)
      print(f"step {step}/{self.total} {self.summary} ETA "
            f"{_clock(eta) if math.isfinite(eta) else '?'}", flush=True)

  def message(self, text: str) -> None:
    """A line that must stay visible (evaluation results, checkpoints)."""
    if not self.enabled:
      return
    if self.bar:
      sys.stderr.write("\r" + " " * len(self.last_line) + "\r")
      self.last_line = ""
    print(text, flush=True)

  def close(self) -> None:
    if self.bar and self.last_line:
      sys.stderr.write("\n")
