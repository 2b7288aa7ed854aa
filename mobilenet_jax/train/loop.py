"""`train_and_evaluate(config, workdir)`: the whole training job as one plain function.

config -> model + data + optimizer -> state -> steps -> loop -> checkpoints and metrics. Running it
again on the same workdir resumes from the latest complete checkpoint; `config.eval_only` scores
the latest checkpoint (or `init_from`) and stops. No absl flags are needed (notebook use).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from mobilenet_jax.compilation_cache import enable_compilation_cache
from mobilenet_jax.models.layers import ConvNormAct
from mobilenet_jax.train import init_from, optim, resumption, sharding, steps
from mobilenet_jax.train import state as state_lib
from mobilenet_jax.train.checkpointing import Checkpointer
from mobilenet_jax.train.config import complete_config, validate_config
from mobilenet_jax.train.metrics import MetricWriter, Progress
from mobilenet_jax.train.workdir_lock import WorkdirLock

CONFIG_FILE = resumption.CONFIG_FILE
_STATISTICS_IMAGES = 256  # images whose BatchNorm statistics replace a TFLite file's folded ones
_STATISTICS_BATCH = 64


def _prepare_workdir(workdir: str, config: ml_collections.ConfigDict, write: bool) -> str:
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    if write:
      with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  except OSError as e:
    raise OSError(f"cannot write to workdir {workdir}: {e}; pass a writable --workdir with free "
                  "space") from e
  return workdir


def _lock_workdir(workdir: str) -> WorkdirLock:
  """Process 0 locks the workdir for this job (train/workdir_lock.py); a second job is refused."""
  lock = WorkdirLock(workdir)
  try:
    lock.acquire()
  except OSError as e:
    raise OSError(f"cannot write to workdir {workdir}: {e}; pass a writable --workdir") from e
  return lock


def _model_meta(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  options = {k: v for k, v in config.model.to_dict().items() if k != "name" and v is not None}
  return {"model": state_lib.model_name(config), "options": {**options, "num_classes": num_classes},
          "resolution": config.resolution, "bn_group_size": config.bn_group_size}


class Evaluator:
  """Scores every example of the eval split once (padded batches, masked), for the model and EMA."""

  def __init__(self, config, model, num_classes: int, batch_sharding, replicated,
               abstract_state: state_lib.TrainState):
    from mobilenet_jax import data

    self._data, self.config = data, config
    global_batch = config.eval_batch_size or config.batch_size
    self.local_batch = global_batch // jax.process_count()
    self.step_fn = steps.BackgroundCompiled(
        steps.jit_eval_step(model, num_classes, batch_sharding, replicated),
        abstract_state.variables(),
        steps.batch_spec(global_batch, config.resolution, batch_sharding, with_mask=True))
    self.batch_sharding = batch_sharding

  def __call__(self, state: state_lib.TrainState) -> dict[str, float]:
    models = {"": state.variables()}
    if state.ema_params is not None:
      models["ema_"] = state.variables(ema=True)
    sums = {prefix: [] for prefix in models}
    for batch in self._data.create_eval_iterator(self.config, local_batch_size=self.local_batch):
      batch = sharding.global_batch(batch, self.batch_sharding)
      for prefix, variables in models.items():
        sums[prefix].append(self.step_fn(variables, batch))
    results = {}
    for prefix, outputs in sums.items():
      total = {k: float(np.sum(np.asarray(v, np.float64)))
               for k, v in sharding.to_host({k: [o[k] for o in outputs] for k in outputs[0]}).items()}
      count = total.pop("count")
      results.update({f"{prefix}{k}": v / count for k, v in total.items()})
      results[f"{prefix}eval_examples"] = int(count)
    return results


def _check_finite(records: list[dict[str, np.ndarray]], first_step: int) -> None:
  for i, record in enumerate(records):
    if not record["finite"]:
      raise FloatingPointError(
          f"non-finite loss, gradients or update at step {first_step + i + 1} (loss "
          f"{float(record['train_loss'])}); the update was skipped and no checkpoint holds it. "
          "Lower schedule.learning_rate, add optimizer.grad_clip_norm, or check the input data.")


def _estimate_batch_norm_statistics(config, model, variables, say) -> dict[str, Any]:
  """BatchNorm statistics of weights that had them folded (`batch_norm_statistics`), measured on the
  same training images in every process (so the replicated values agree)."""
  from mobilenet_jax import data
  from mobilenet_jax.train.batch_norm_statistics import estimate_batch_norm_statistics

  batch = min(config.batch_size, _STATISTICS_BATCH)
  images = data.create_train_iterator(config, local_batch_size=batch, seed=config.seed,
                                      process_index=0, process_count=1)
  batches = [next(images)["image"] for _ in range(-(-_STATISTICS_IMAGES // batch))]
  say(f"init_from: its BatchNorm was folded into the convolutions (a TFLite file's weights); "
      f"measuring BatchNorm statistics on {batch * len(batches)} training images, the inference "
      "function unchanged, so that training-mode BatchNorm starts from the pretrained function")
  plain = model.clone(conv_norm_act=ConvNormAct)   # nn.BatchNorm modules whose outputs are read
  return estimate_batch_norm_statistics(plain, variables, batches)


def train_and_evaluate(config: ml_collections.ConfigDict | dict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates as `config` says; returns the last train and eval metrics.

  Returned keys: those of metrics.jsonl (`train_loss`, `eval_top1`, ...), plus `step` and
  `preempted` (True when SIGTERM stopped the run after saving a checkpoint).
  """
  config = complete_config(config)
  enable_compilation_cache(config.compilation_cache)
  sharding.maybe_initialize_distributed(config.distributed)
  is_main = jax.process_index() == 0
  say = functools.partial(print, flush=True) if is_main else lambda *_: None
  resolved = init_from.resolve_config(config)  # unset model.* from init_from's model.json
  config = resolved.config
  for note in resolved.notes:
    say(note)
  validate_config(config, jax.device_count(), jax.process_count())
  from mobilenet_jax import data  # the data layer raises clear errors for missing datasets

  info = data.dataset_info(config)  # may prepare the dataset (one process, the others wait)
  sharding.wait_for_all_processes("dataset ready")
  model = state_lib.create_model(config, info.num_classes)
  workdir = _prepare_workdir(workdir, config, write=False)  # config.json: after the checks below
  lock = _lock_workdir(workdir) if is_main else None
  try:
    return _run(config, workdir, info, model, is_main)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir, info, model, is_main) -> dict[str, Any]:
  """train_and_evaluate once the workdir is this job's."""
  say = functools.partial(print, flush=True) if is_main else lambda *_: None
  mesh = sharding.create_mesh()
  replicated, batch_sharding = sharding.replicated(mesh), sharding.data_sharded(mesh)
  steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else max(1, int(round(config.num_epochs * steps_per_epoch))))
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch, total_steps)
  tx = optim.create_optimizer(config, schedule)

  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                              async_save=config.async_checkpointing,
                              meta=_model_meta(config, info.num_classes))
  try:
    state_init = state_lib.trace_state_init(config, model, tx, replicated)
    abstract_state = state_lib.abstract_train_state(state_init)
    # Every process restores the same step (a host that saw no checkpoint would start afresh).
    latest = checkpointer.latest_step()
    latest = sharding.same_on_every_process(-1 if latest is None else latest,
                                            "the latest checkpoint step (-1: none)")
    latest = None if latest < 0 else latest
    if latest is None and config.eval_only and not config.init_from:
      raise FileNotFoundError(f"eval_only: no checkpoint in {checkpointer.directory} and no "
                              "init_from; train first or set init_from")
    if latest is not None:  # another architecture's checkpoint: an error before compiling
      checkpointer.check_compatible(latest, abstract_state)
      resumption.check_config_change(workdir, config)
      final = None if config.eval_only or latest < total_steps else (
          resumption.final_evaluation(workdir, latest))
      if final is not None:
        if is_main:
          print(f"the run in {workdir} is finished (step {latest} of {total_steps}, evaluated): "
                "nothing to do. Raise num_epochs or num_train_steps to train on, or set "
                "eval_only=True to evaluate again", flush=True)
        return {**final, "step": latest, "preempted": False}
    loaded = None
    if latest is None and config.init_from:  # checked against shapes, before compiling
      loaded = init_from.load(config.init_from, abstract_state.variables(), config.model.to_dict())
      say(f"init_from: {loaded.summary()}; training {config.trainable} "
          f"({'the classifier only, the rest frozen in inference mode' if config.trainable == 'head' else 'every layer'})")
    _prepare_workdir(workdir, config, write=is_main)  # the run is accepted: record its config
    # The steps compile in background threads while the state is created and the input starts.
    evaluate = Evaluator(config, model, info.num_classes, batch_sharding, replicated,
                         abstract_state)
    train_step = None if config.eval_only else steps.BackgroundCompiled(
        steps.jit_train_step(config, model, tx, schedule, info.num_classes, replicated,
                             batch_sharding, replicated),
        abstract_state, steps.batch_spec(config.batch_size, config.resolution, batch_sharding))
    if latest is not None:
      state = checkpointer.restore(latest, abstract_state)
    else:
      state = state_lib.create_train_state(state_init)
      if loaded is not None:
        variables = init_from.merge(sharding.to_host(state.variables()), loaded.values)
        if loaded.folded_batch_norm and config.trainable == "all" and not config.eval_only:
          variables = _estimate_batch_norm_statistics(config, model, variables, say)
        state = state_lib.with_variables(state, variables, replicated)
    # A fresh start (no checkpoint) drops every record of earlier, killed starts.
    writer = MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard,
                          resume_step=-1 if latest is None else latest)
    try:
      if jax.process_count() > 1:  # all compiled: the processes meet before their first step
        for step_fn in (evaluate.step_fn, train_step):
          if step_fn is not None:
            step_fn.wait()
        sharding.wait_for_all_processes("compiled")
      if config.eval_only:
        results = evaluate(state)
        step = int(sharding.to_host(state.step))
        writer.write(step, results)
        return {"step": step, "preempted": False, **results}
      return _train(config, state, train_step, evaluate, checkpointer, writer, total_steps,
                    batch_sharding, is_main)
    finally:
      writer.close()
  finally:
    checkpointer.close()


def _train(config, state, train_step, evaluate, checkpointer, writer, total_steps,
           batch_sharding, is_main) -> dict[str, Any]:
  from mobilenet_jax import data

  start_step = int(sharding.to_host(state.step))
  progress = Progress(total_steps, start_step, config.progress_bar, enabled=is_main)
  last: dict[str, Any] = {"step": start_step, "preempted": False}
  if start_step >= total_steps:  # e.g. preempted during the final evaluation
    last.update(evaluate(state))
    writer.write(start_step, {k: v for k, v in last.items() if k.startswith(("eval", "ema"))})
    return last

  train_iter = data.create_train_iterator(
      config, local_batch_size=config.batch_size // jax.process_count(), seed=config.seed,
      start_step=start_step)
  if not train_step.done():
    progress.message("compiling the train step (later starts of this configuration load it from "
                     "the compilation cache)...")
  pending: list[dict[str, jax.Array]] = []
  interval_start, interval_first = None, start_step
  step = start_step
  try:
    for step in range(start_step + 1, total_steps + 1):
      batch = sharding.global_batch(next(train_iter), batch_sharding)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      if interval_start is None:  # the first step includes compilation: time from its end
        jax.block_until_ready(metrics)
        # All from the moment the step's compilation began (in the background, before this loop).
        progress.message(f"first step done {time.perf_counter() - train_step.started:.1f}s after "
                         f"its compilation began: traced in {train_step.trace_s:.1f}s, compiled "
                         f"(or loaded from the compilation cache) in {train_step.compile_s:.1f}s")
        interval_start, interval_first = time.perf_counter(), step
        progress.compiled(step)
      progress.update(step)
      is_last = step == total_steps
      preempted = checkpointer.reached_preemption(step)

      if pending and (step % config.log_every_steps == 0 or is_last or preempted):
        records = sharding.to_host(pending)
        _check_finite(records, step - len(records))
        elapsed = time.perf_counter() - interval_start
        means = {k: float(np.mean([r[k] for r in records]))
                 for k in ("train_loss", "train_accuracy", "grad_norm")}
        rate = (step - interval_first) / elapsed if step > interval_first else None
        means.update(learning_rate=float(records[-1]["learning_rate"]), steps_per_sec=rate,
                     images_per_sec=None if rate is None else rate * config.batch_size,
                     elapsed_s=time.perf_counter() - progress.start)
        writer.write(step, means)
        progress.log(step, means)
        last.update(means)
        pending = []
        interval_start, interval_first = time.perf_counter(), step

      if is_last or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0):
        results = evaluate(state)
        writer.write(step, results)
        progress.message(f"step {step}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in results.items() if not k.endswith("examples")))
        last.update(results)
        interval_start, interval_first = time.perf_counter(), step

      if is_last or preempted or (config.checkpoint_every_steps > 0 and
                                  step % config.checkpoint_every_steps == 0):
        if pending:
          records = sharding.to_host(pending)
          _check_finite(records, step - len(records))
        checkpointer.save(step, state)
      if preempted:
        checkpointer.wait()
        progress.message(f"preempted (SIGTERM): saved the checkpoint of step {step}; run the same "
                         "command again to resume")
        last["preempted"] = True
        break
  finally:
    progress.close()
  checkpointer.wait()
  last["step"] = step
  return last
