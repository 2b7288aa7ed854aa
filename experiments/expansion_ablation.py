"""What does MobileNetV2's expansion factor t buy, and what does it cost? (V2 paper sections 3-4.)

Also the same question for MobileNetV1's width multiplier alpha and resolution rho (V1 paper
section 4, Tables 6-7): same machinery, another knob. For every variant it measures

  params            trainable parameters (`mobilenet_jax.count_params`)
  MAdds             multiply-adds of one image, the papers' convention (`mobilenet_jax.count_madds`)
  train peak MiB    XLA's buffer assignment of one compiled training step (`memory_analysis()`):
                    arguments + outputs - aliased (donated) + temporaries; temp alone is also kept
  images/s          measured here: the train step and the eval (inference) step of
                    `mobilenet_jax.train`, best of `timing_repeats` windows of `timing_steps` calls
  top-1             eval accuracy after `mobilenet_jax.train.train_and_evaluate`, one run per seed
                    (mean, sample standard deviation, the 95% confidence interval of the mean over
                    seeds from Student's t, every seed's value)

and writes `<study>.csv`, `<study>.json`, `<study>.md` and two plots to the output folder.

    python experiments/expansion_ablation.py                       # both studies, embedded digits
    python experiments/expansion_ablation.py --study=expansion --ts=1,4,6,1-6-6-6-2-2-2 --seeds=0,1
    python experiments/expansion_ablation.py --quick --out=/tmp/ablation        # a smoke run
    python experiments/expansion_ablation.py --study=expansion --config=configs/cifar10.py \
        --dataset=folder --data_dir=/data/cifar10-jpeg.tar.gz --width=0.35 --ts=1,2,4,6,10 \
        --out=experiments/results/cifar10                        # the CIFAR-10 study (README)

The notebook `expansion_ablation.ipynb` calls the same functions and shows the tables and plots.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Callable, Optional, Sequence, Union

import mobilenet_jax
from mobilenet_jax import config_files
from mobilenet_jax.models import mobilenet_v1, mobilenet_v2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED_RESULTS = os.path.join(ROOT, "experiments", "results")
STUDIES = ("expansion", "v1")
STUDY_TITLES = {"expansion": "MobileNetV2 expansion factor t",
                "v1": "MobileNetV1 width multiplier alpha and resolution rho"}
Expansion = Union[float, tuple[float, ...]]


@dataclasses.dataclass(frozen=True)
class AblationSettings:
  """Everything a sweep depends on; stored with its results.

  config / v1_config: the training recipe of each study, a config file with an optional argument
    (`configs/mobilenet_v2.py:width=1.0`); v1_config None: the same file as `config`. Each variant
    overrides only the model (name, width, t) and the resolution.
  ts: t values of the expansion study: a number sets every t=6 stage of Table 2 (the first stage keeps
    its t=1, as in the paper), a 7-tuple sets each stage (a per-stage pattern).
  v1_widths: alpha values at the largest of v1_resolutions (V1 Table 6); v1_resolutions: rho values,
    as input sizes, at the first width (V1 Table 7).
  width: the V2 width multiplier, or several (the expansion study then runs every t at each width).
  dataset, data_dir, width, resolution, batch_size, epochs, steps: None keeps the recipe's value.
  fast_compile: `jax_disable_most_optimizations` (quick runs: compile time dominates; slower steps).
  compute: how the networks' layers are computed (`create_model(compute=...)`); None keeps the
    recipe's ("auto": the XLA:CPU kernels on CPU). Quick runs use XLA's own, which trace and
    compile faster.
  """
  config: str = "configs/ablation_digits.py"
  v1_config: Optional[str] = None
  dataset: Optional[str] = None
  data_dir: Optional[str] = None
  width: Optional[Union[float, tuple[float, ...]]] = None
  resolution: Optional[int] = None
  ts: tuple[Expansion, ...] = (1, 2, 3, 4, 6, 8, (1, 6, 6, 6, 2, 2, 2), (1, 2, 2, 2, 6, 6, 6))
  v1_widths: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
  v1_resolutions: tuple[int, ...] = (40, 32)
  seeds: tuple[int, ...] = (0, 1, 2)
  batch_size: Optional[int] = None
  epochs: Optional[float] = None
  steps: Optional[int] = None
  timing_steps: int = 10
  timing_repeats: int = 3
  fast_compile: bool = False
  compute: Optional[str] = None

  def to_json(self) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self)))


def quick_settings(**overrides: Any) -> AblationSettings:
  """A smoke run of everything (CI, the notebook's quick mode): t=1 and t=6, one V1 network,
  32x32, width 0.35, 3 training steps of 32 images, 1 seed, XLA optimisations off, XLA's layers."""
  quick = dict(width=0.35, resolution=32, ts=(1, 6), v1_widths=(0.25,), v1_resolutions=(32,),
               seeds=(0,), batch_size=32, steps=3, timing_steps=2, timing_repeats=1,
               fast_compile=True, compute="xla")
  quick.update(overrides)
  return AblationSettings(**quick)


# ------------------------------------------------------------------------------------------------
# Variants


@dataclasses.dataclass(frozen=True)
class Variant:
  """One network of a study: the model and the knob values that distinguish it."""
  study: str
  label: str
  model: str
  width: float
  resolution: int
  expansion: Optional[tuple[float, ...]] = None  # V2: t of each of the 7 stages
  t: str = ""                                     # V2: the t as given ("6" or "1-6-6-6-2-2-2")

  @property
  def slug(self) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in self.label)


def format_t(t: Expansion) -> str:
  """'6' for one number, '1-6-6-6-2-2-2' for a per-stage pattern."""
  if isinstance(t, (int, float)):
    return f"{t:g}"
  return "-".join(f"{x:g}" for x in t)


def parse_ts(text: str) -> tuple[Expansion, ...]:
  """"1,2,4,6,1-6-6-6-2-2-2" -> (1.0, 2.0, 4.0, 6.0, (1.0, 6.0, 6.0, 6.0, 2.0, 2.0, 2.0))."""
  values: list[Expansion] = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    try:
      parts = tuple(float(p) for p in item.split("-"))
    except ValueError:
      raise ValueError(f"cannot read t value {item!r}: write numbers like 6 or per-stage patterns of "
                       f"{len(mobilenet_v2.V2_TABLE)} numbers joined by '-', e.g. 1-6-6-6-2-2-2"
                       ) from None
    values.append(parts[0] if len(parts) == 1 else parts)
  if not values:
    raise ValueError("no t values given; e.g. --ts=1,2,3,4,6,8")
  return tuple(values)


def expansion_variants(ts: Sequence[Expansion], width: Union[float, Sequence[float]],
                       resolution: int) -> list[Variant]:
  """One MobileNetV2 per t (a number or a per-stage pattern) and width, validated before anything
  runs. With several widths the labels name both knobs ("w=0.35 t=6")."""
  widths = (width,) if isinstance(width, (int, float)) else tuple(width)
  stages = [mobilenet_v2.stage_expansions(t) for t in ts]  # clear errors on t < 1 or a bad length
  variants = []
  for w in widths:
    prefix = f"w={w:g} " if len(widths) > 1 else ""
    for t, expansion in zip(ts, stages):
      variants.append(Variant("expansion", f"{prefix}t={format_t(t)}", "mobilenet_v2", w,
                              resolution, expansion, format_t(t)))
  return variants


def v1_variants(widths: Sequence[float], resolutions: Sequence[int]) -> list[Variant]:
  """V1 Table 6 (every alpha at the largest resolution) and Table 7 (every resolution at the first
  alpha, the paper's 1.0), without duplicates."""
  if not widths or not resolutions:
    raise ValueError("the V1 study needs at least one width and one resolution")
  for r in resolutions:
    if r < 32:
      raise ValueError(f"V1 resolution {r} < 32: MobileNets need at least 32x32 inputs")
  top = max(resolutions)
  points = [(w, top) for w in widths] + [(widths[0], r) for r in resolutions]
  variants, seen = [], set()
  for w, r in points:
    if (w, r) not in seen:
      seen.add((w, r))
      mobilenet_v1.mobilenet_v1_spec(w)  # validates alpha
      variants.append(Variant("v1", f"alpha={w:g} rho={r}", "mobilenet_v1", w, r))
  return variants


# ------------------------------------------------------------------------------------------------
# Training configs


def load_config(spec: str):
  """A config file's `get_config(arg)`: "configs/default.py", "configs/mobilenet_v2.py:width=1.0"
  or a shipped recipe's name ("mobilenet_v2:width=1.0"), as `python -m mobilenet_jax.main` reads it."""
  return config_files.load(spec)


def study_base_config(settings: AblationSettings, study: str):
  """The recipe of a study with the sweep-wide overrides applied (dataset, batch, length)."""
  spec = settings.v1_config if study == "v1" and settings.v1_config else settings.config
  config = load_config(spec)
  if settings.dataset is not None:
    config.dataset.name = settings.dataset
  if settings.data_dir is not None:
    config.dataset.data_dir = settings.data_dir
  if settings.batch_size is not None:
    config.batch_size = settings.batch_size
  if settings.epochs is not None:
    config.num_epochs = float(settings.epochs)
    config.num_train_steps = -1
  if settings.steps is not None:
    config.num_train_steps = settings.steps
  if settings.compute is not None:
    config.model.compute = settings.compute
  return config


def variant_config(base, variant: Variant, seed: int):
  """The training config of one variant and seed (a complete, validated-key ConfigDict)."""
  from mobilenet_jax.train import complete_config

  values = base.to_dict()
  model = {k: v for k, v in values["model"].items() if k != "expansion"}
  model.update(name=variant.model, width_multiplier=variant.width)
  if variant.expansion is not None:
    model["expansion"] = tuple(variant.expansion)
  values.update(model=model, resolution=variant.resolution, seed=seed, progress_bar="off",
                tensorboard=False, checkpoint_every_steps=0, keep_checkpoints=1,
                eval_every_steps=0)
  return complete_config(values)


def schedule_length(config, num_train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total steps) as `train_and_evaluate` derives them, so that the step compiled
  here is the very program training compiles (a persistent-cache hit)."""
  steps_per_epoch = max(1, num_train_examples // config.batch_size)
  total = (config.num_train_steps if config.num_train_steps > 0
           else max(1, int(round(config.num_epochs * steps_per_epoch))))
  return steps_per_epoch, total


# ------------------------------------------------------------------------------------------------
# Measurements


def measure_costs(variant: Variant, num_classes: int, small_input: int = 0) -> dict[str, Any]:
  """Params and MAdds (shape inference only) and, for V2, the expanded width of every block;
  `small_input` as the recipe's model option (stride-1 stem for 32x32 datasets)."""
  import jax
  import jax.numpy as jnp

  options = dict(width_multiplier=variant.width, num_classes=num_classes, small_input=small_input)
  if variant.expansion is not None:
    options["expansion"] = variant.expansion
  model = mobilenet_jax.create_model(variant.model, **options)
  images = jnp.zeros((1, variant.resolution, variant.resolution, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
  costs = {"params": mobilenet_jax.count_params(shapes),
           "madds": mobilenet_jax.count_madds(model, variant.resolution)}
  if variant.expansion is not None:
    spec = mobilenet_v2.mobilenet_v2_spec(variant.width, variant.expansion)
    costs["expanded_widths"] = "-".join(str(b.expanded_features) for b in spec.blocks)
  return costs


def _best_rate(call: Callable[[], Any], images_per_call: int, calls: int, repeats: int) -> float:
  """Images per second of the fastest of `repeats` windows of `calls` calls (after a warm-up call):
  on a shared machine the fastest window is the one least disturbed by other processes."""
  import jax

  jax.block_until_ready(call())
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = call()
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - start)
  return images_per_call * calls / best


def measure_step(config, num_classes: int, num_train_examples: int, timing_steps: int,
                 repeats: int) -> dict[str, float]:
  """Memory of the compiled train step and images/s of the train and eval steps of
  `mobilenet_jax.train` (synthetic batches of the config's shapes; the input pipeline is excluded)."""
  import jax
  import numpy as np

  from mobilenet_jax.train import optim, sharding, steps
  from mobilenet_jax.train import state as state_lib

  model = state_lib.create_model(config, num_classes)
  mesh = sharding.create_mesh()
  replicated, batch_sharding = sharding.replicated(mesh), sharding.data_sharded(mesh)
  schedule = optim.create_learning_rate_schedule(config, *schedule_length(config,
                                                                          num_train_examples))
  tx = optim.create_optimizer(config, schedule)
  state_init = state_lib.trace_state_init(config, model, tx, replicated)
  abstract = state_lib.abstract_train_state(state_init)
  eval_size = config.eval_batch_size or config.batch_size
  train_spec = steps.batch_spec(config.batch_size, config.resolution, batch_sharding)
  eval_spec = steps.batch_spec(eval_size, config.resolution, batch_sharding, with_mask=True)

  start = time.perf_counter()
  train_step = steps.jit_train_step(config, model, tx, schedule, num_classes, replicated,
                                    batch_sharding, replicated).lower(abstract, train_spec).compile()
  compile_s = time.perf_counter() - start
  eval_step = steps.jit_eval_step(model, num_classes, batch_sharding,
                                  replicated).lower(abstract.variables(), eval_spec).compile()
  train_mem, eval_mem = train_step.memory_analysis(), eval_step.memory_analysis()

  rng = np.random.default_rng(0)

  def batch(spec):
    values = {"image": rng.standard_normal(spec["image"].shape, np.float32),
              "label": rng.integers(0, num_classes, spec["label"].shape, np.int32)}
    if "mask" in spec:
      values["mask"] = np.ones(spec["mask"].shape, bool)
    return sharding.global_batch(values, batch_sharding)

  train_batch, eval_batch = batch(train_spec), batch(eval_spec)
  holder = [state_lib.create_train_state(state_init)]

  def train_call():
    holder[0], metrics = train_step(holder[0], train_batch)
    return metrics

  train_rate = _best_rate(train_call, config.batch_size, timing_steps, repeats)
  variables = holder[0].variables()
  eval_rate = _best_rate(lambda: eval_step(variables, eval_batch), eval_size, timing_steps, repeats)
  mib = 2.0 ** 20
  return {
      "train_peak_mib": (train_mem.argument_size_in_bytes + train_mem.output_size_in_bytes
                         - train_mem.alias_size_in_bytes + train_mem.temp_size_in_bytes) / mib,
      "train_temp_mib": train_mem.temp_size_in_bytes / mib,
      "eval_peak_mib": (eval_mem.argument_size_in_bytes + eval_mem.output_size_in_bytes
                        - eval_mem.alias_size_in_bytes + eval_mem.temp_size_in_bytes) / mib,
      "train_images_per_sec": train_rate,
      "infer_images_per_sec": eval_rate,
      "train_compile_s": compile_s,
  }


def run_hash(config) -> str:
  """Short hash of a whole training config: a run directory is only resumed by the same config."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def train_seeds(base, variant: Variant, seeds: Sequence[int], workdir: str,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Trains and evaluates `variant` once per seed; a finished run in `workdir` is only re-evaluated."""
  from mobilenet_jax.train import train_and_evaluate

  results = []
  for seed in seeds:
    config = variant_config(base, variant, seed)
    run_dir = os.path.join(workdir, f"{variant.study}_{variant.slug}_seed{seed}_{run_hash(config)}")
    start = time.perf_counter()
    metrics = train_and_evaluate(config, run_dir)
    wall = time.perf_counter() - start
    if metrics.get("preempted"):  # SIGTERM: the run saved a checkpoint; stop the whole sweep
      raise SystemExit(f"stopped by SIGTERM during {run_dir} (checkpoint saved); run the same "
                       "command again to continue: finished runs are reused")
    log(f"  {variant.label} seed {seed}: top-1 {metrics['eval_top1']:.4f} after "
        f"{metrics['step']} steps ({wall:.0f} s)")
    results.append({"seed": seed, "eval_top1": float(metrics["eval_top1"]),
                    "steps": int(metrics["step"]), "wall_s": wall})
  return results


def _load_average() -> Optional[float]:
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def measure_variant(base, variant: Variant, settings: AblationSettings, workdir: str,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
  """One row of a study: costs, memory, speed and accuracy over the seeds."""
  from mobilenet_jax import data

  config = variant_config(base, variant, settings.seeds[0])
  info = data.dataset_info(config)
  row: dict[str, Any] = {"study": variant.study, "variant": variant.label, "model": variant.model,
                         "width": variant.width, "resolution": variant.resolution,
                         "t": variant.t}
  row.update(measure_costs(variant, info.num_classes, base.model.get("small_input", 0)))
  row["load_avg"] = _load_average()
  row.update(measure_step(config, info.num_classes, info.num_train_examples,
                          settings.timing_steps, settings.timing_repeats))
  runs = train_seeds(base, variant, settings.seeds, workdir, log)
  accuracies = [r["eval_top1"] for r in runs]
  row.update(
      top1_mean=statistics.fmean(accuracies),
      top1_std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
      top1_ci95=confidence_half_width(accuracies),
      top1_min=min(accuracies), top1_max=max(accuracies),
      top1_per_seed=";".join(f"{a:.4f}" for a in accuracies),
      seeds=len(accuracies), train_steps=runs[0]["steps"],
      train_wall_s=sum(r["wall_s"] for r in runs))
  return row


def confidence_half_width(values: Sequence[float], level: float = 0.95) -> float:
  """Half-width of the `level` confidence interval of the mean of `values` (independent seeds):
  t_{(1+level)/2, n-1} * s / sqrt(n), Student's t; 0 for a single value."""
  if len(values) < 2:
    return 0.0
  from scipy import stats

  n = len(values)
  return float(stats.t.ppf((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n))


def intervals_separated(a: dict[str, Any], b: dict[str, Any]) -> bool:
  """Whether two rows' 95% intervals of the mean top-1 do not overlap."""
  low_a, high_a = float(a["top1_mean"]) - _ci95(a), float(a["top1_mean"]) + _ci95(a)
  low_b, high_b = float(b["top1_mean"]) - _ci95(b), float(b["top1_mean"]) + _ci95(b)
  return high_a < low_b or high_b < low_a


def expansion_claim(rows: Sequence[dict[str, Any]], low: float = 5, high: float = 10) -> str:
  """The V2 paper's claim (section 4: expansion rates between 5 and 10 give nearly the same
  accuracy) checked on a study's rows, one paragraph per width: the spread of the mean top-1 over
  the single t values in [low, high], whether their 95% intervals all overlap, and whether t=1 and
  t=6 are separated by their intervals."""
  lines = []
  for width in sorted({float(r["width"]) for r in rows}):
    by_t = {float(r["t"]): r for r in rows
            if float(r["width"]) == width and "-" not in str(r["t"])}
    inside = [by_t[t] for t in sorted(by_t) if low <= t <= high]
    text = f"width {width:g}:"
    if len(inside) >= 2:
      means = [100 * float(r["top1_mean"]) for r in inside]
      pairs = [(a, b) for i, a in enumerate(inside) for b in inside[i + 1:]]
      apart = [f"t={a['t']} vs t={b['t']}" for a, b in pairs if intervals_separated(a, b)]
      text += (f" t in [{low:g}, {high:g}] ({', '.join('t=' + r['t'] for r in inside)}): top-1 "
               f"{min(means):.2f}-{max(means):.2f}% (spread {max(means) - min(means):.2f} points); "
               + ("every pair's 95% intervals overlap" if not apart else
                  "separated by their 95% intervals: " + ", ".join(apart)) + ".")
    if 1.0 in by_t and 6.0 in by_t:
      one, six = by_t[1.0], by_t[6.0]
      text += (f" t=1 {100 * one['top1_mean']:.2f} ± {100 * _ci95(one):.2f}% against t=6 "
               f"{100 * six['top1_mean']:.2f} ± {100 * _ci95(six):.2f}%: "
               + ("separated" if intervals_separated(one, six) else "not separated")
               + " by their 95% intervals.")
    lines.append(text)
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# A study: variants -> rows -> files


def study_variants(study: str, settings: AblationSettings, base) -> list[Variant]:
  if study == "expansion":
    width = settings.width if settings.width is not None else base.model.width_multiplier
    resolution = settings.resolution if settings.resolution is not None else base.resolution
    return expansion_variants(settings.ts, width, resolution)
  if study == "v1":
    return v1_variants(settings.v1_widths, settings.v1_resolutions)
  raise ValueError(f"unknown study {study!r}; choose from {STUDIES}")


def output_paths(study: str, out_dir: str) -> dict[str, str]:
  names = {"csv": f"{study}.csv", "json": f"{study}.json", "markdown": f"{study}.md",
           "accuracy_plot": f"{study}_accuracy_vs_madds.png", "cost_plot": f"{study}_costs.png"}
  return {k: os.path.join(out_dir, v) for k, v in names.items()}


def environment() -> dict[str, Any]:
  import jax

  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [d.device_kind for d in jax.devices()], "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "machine": platform.machine()}


def run_study(study: str, settings: AblationSettings, out_dir: str, workdir: str,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Measures every variant of `study` and writes its CSV, JSON, markdown table and plots."""
  base = study_base_config(settings, study)
  variants = study_variants(study, settings, base)
  log(f"{STUDY_TITLES[study]}: {len(variants)} variants x {len(settings.seeds)} seeds")
  start = time.perf_counter()
  rows = []
  for variant in variants:
    row = measure_variant(base, variant, settings, workdir, log)
    log(f"{variant.label}: {row['params']:,} params, {row['madds'] / 1e6:.2f} M MAdds, "
        f"train peak {row['train_peak_mib']:.1f} MiB, {row['infer_images_per_sec']:.0f} / "
        f"{row['train_images_per_sec']:.0f} img/s (infer / train), top-1 {row['top1_mean']:.4f}")
    rows.append(row)
  write_results(study, rows, settings, out_dir, time.perf_counter() - start)
  return rows


def write_results(study: str, rows: list[dict[str, Any]], settings: AblationSettings,
                  out_dir: str, wall_s: float) -> dict[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = output_paths(study, out_dir)
  fields = list(dict.fromkeys(k for row in rows for k in row))
  with open(paths["csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  with open(paths["json"], "w") as f:
    json.dump({"study": study, "title": STUDY_TITLES[study], "settings": settings.to_json(),
               "wall_s": wall_s, "environment": environment(), "rows": rows}, f, indent=2)
  with open(paths["markdown"], "w") as f:
    f.write(markdown_table(rows) + "\n")
  plot_accuracy_vs_madds(rows, paths["accuracy_plot"], STUDY_TITLES[study])
  plot_costs(rows, paths["cost_plot"], STUDY_TITLES[study])
  return paths


def load_results(study: str, out_dir: str) -> Optional[dict[str, Any]]:
  """The JSON written by `run_study`, or None when the folder has none."""
  path = output_paths(study, out_dir)["json"]
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_or_load(study: str, settings: AblationSettings, out_dir: str, workdir: str,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """The stored rows when `out_dir` holds results of exactly these settings, else `run_study`."""
  stored = load_results(study, out_dir)
  if stored is not None and stored["settings"] == settings.to_json():
    log(f"{study}: loaded {output_paths(study, out_dir)['json']} (same settings; delete it to rerun)")
    return stored["rows"]
  return run_study(study, settings, out_dir, workdir, log)


# ------------------------------------------------------------------------------------------------
# Tables and plots


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| variant | params | MAdds (M) | train peak MiB | infer img/s | train img/s | "
           "top-1 % (mean ± 95% CI) | std | seeds |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {int(r['params']):,} | {float(r['madds']) / 1e6:.2f} | "
                 f"{float(r['train_peak_mib']):.1f} | {float(r['infer_images_per_sec']):,.0f} | "
                 f"{float(r['train_images_per_sec']):,.0f} | {100 * float(r['top1_mean']):.2f} ± "
                 f"{100 * _ci95(r):.2f} | {100 * float(r['top1_std']):.2f} | {r['seeds']} |")
  return "\n".join(lines)


def _ci95(row: dict[str, Any]) -> float:
  """The row's 95% half-width (rows written before it was recorded: from the per-seed values)."""
  if "top1_ci95" in row:
    return float(row["top1_ci95"])
  return confidence_half_width([float(x) for x in str(row["top1_per_seed"]).split(";") if x])


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def _short_label(row: dict[str, Any]) -> str:
  return row["variant"].replace("alpha=", "α=").replace("rho=", "ρ=")


def plot_accuracy_vs_madds(rows: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """Top-1 (mean ± 95% CI over seeds) against MAdds, each point labelled with its knob values."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    x, y, err = float(r["madds"]) / 1e6, 100 * float(r["top1_mean"]), 100 * _ci95(r)
    pattern = "-" in str(r.get("t", ""))
    ax.errorbar(x, y, yerr=err, fmt="s" if pattern else "o", capsize=3,
                color="tab:orange" if pattern else "tab:blue")
    ax.annotate(_short_label(r), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
  ax.set_xlabel("multiply-adds per image (millions)")
  ax.set_ylabel("eval top-1 (%), mean ± 95% CI over seeds")
  ax.set_title(f"{title}: accuracy vs MAdds", fontsize=10)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


COST_PANELS = (("params", 1e-6, "params (millions)"),
               ("madds", 1e-6, "MAdds per image (millions)"),
               ("train_peak_mib", 1.0, "train step peak memory (MiB)"),
               ("infer_images_per_sec", 1.0, "inference images/s"),
               ("train_images_per_sec", 1.0, "training images/s"),
               ("top1_mean", 100.0, "eval top-1 (%), 95% CI"))


def plot_costs(rows: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """Params, MAdds, memory, images/s and accuracy against the knob (one bar per variant, in the
  order of the sweep)."""
  plt = _pyplot()
  fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
  labels = [_short_label(r) for r in rows]
  for ax, (key, scale, name) in zip(axes.flat, COST_PANELS):
    values = [float(r[key]) * scale for r in rows]
    errors = ([100 * _ci95(r) for r in rows] if key == "top1_mean" else None)
    ax.bar(range(len(rows)), values, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_title(name, fontsize=9)
    if key == "top1_mean" and values:
      low = min(v - (e or 0) for v, e in zip(values, errors))
      ax.set_ylim(max(0.0, low - 5), min(100.0, max(values) + 2))
    ax.grid(axis="y", alpha=0.3)
  fig.suptitle(f"{title}: costs", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Setup and command line


def configure_jax(settings: AblationSettings, cache_dir: Optional[str]) -> None:
  """Process-wide JAX options of a sweep: the persistent compilation cache (seeds after the first,
  and the training run after the timing run, reuse the compiled steps) and, for quick runs, XLA's
  fast-compile mode. Call before the first compilation."""
  import jax

  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if settings.fast_compile:
    jax.config.update("jax_disable_most_optimizations", True)


def check_out_dir(out_dir: str, quick: bool) -> None:
  if quick and os.path.realpath(out_dir) == os.path.realpath(COMMITTED_RESULTS):
    raise ValueError(f"quick results must not replace the committed ones in {COMMITTED_RESULTS}; "
                     "pass another --out")


def _floats(text: str) -> tuple[float, ...]:
  return tuple(float(x) for x in text.split(",") if x.strip())


def _width(text: str) -> Union[float, tuple[float, ...]]:
  widths = _floats(text)
  return widths[0] if len(widths) == 1 else widths


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  defaults = AblationSettings()
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--study", default=",".join(STUDIES),
                 help="comma-separated studies: expansion (V2 t), v1 (V1 alpha and rho)")
  p.add_argument("--out", default=None,
                 help=f"output folder (default: {COMMITTED_RESULTS}; --quick: a new temp folder)")
  p.add_argument("--workdir", default=os.path.join("runs", "ablation"),
                 help="training runs (one per variant and seed; finished runs are reused)")
  p.add_argument("--quick", action="store_true", help="smoke run: " + quick_settings.__doc__)
  p.add_argument("--config", default=defaults.config, help="training recipe FILE[:ARG]")
  p.add_argument("--v1_config", default=None, help="recipe of the V1 study (default: --config)")
  p.add_argument("--dataset", default=None,
                 help="digits (embedded), cifar10, imagenette, ... (tfds), or folder")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data directory; for --dataset=folder the image folder or its archive")
  p.add_argument("--width", type=_width, default=None,
                 help="V2 width multiplier, or several: 0.35,1.0 (default: the recipe's)")
  p.add_argument("--resolution", type=int, default=None, help="V2 input size (default: recipe's)")
  p.add_argument("--ts", type=parse_ts, default=None,
                 help="t values and per-stage patterns, e.g. 1,2,3,4,6,8,1-6-6-6-2-2-2 (default: "
                      + ",".join(format_t(t) for t in defaults.ts) + ")")
  p.add_argument("--v1_widths", type=_floats, default=None, help="V1 alphas, e.g. 1,0.75,0.5,0.25")
  p.add_argument("--v1_resolutions", type=_ints, default=None, help="V1 input sizes, e.g. 40,32")
  p.add_argument("--seeds", type=_ints, default=None, help="e.g. 0,1,2")
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--epochs", type=float, default=None)
  p.add_argument("--steps", type=int, default=None, help="training steps (overrides --epochs)")
  p.add_argument("--timing_steps", type=int, default=None)
  p.add_argument("--timing_repeats", type=int, default=None)
  p.add_argument("--compile_cache", default=None,
                 help="persistent XLA compilation cache (default: WORKDIR/jax_cache; 'none': off)")
  return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> AblationSettings:
  given = {k: getattr(args, k) for k in (
      "config", "v1_config", "dataset", "data_dir", "width", "resolution", "ts", "v1_widths",
      "v1_resolutions", "seeds", "batch_size", "epochs", "steps", "timing_steps", "timing_repeats")}
  given = {k: v for k, v in given.items() if v is not None}
  if not given.get("seeds", (0,)):
    raise ValueError("--seeds needs at least one seed")
  return quick_settings(**given) if args.quick else AblationSettings(**given)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, list[dict[str, Any]]]:
  args = parse_args(argv)
  settings = settings_from_args(args)
  studies = [s.strip() for s in args.study.split(",") if s.strip()]
  for s in studies:
    if s not in STUDIES:
      raise ValueError(f"unknown study {s!r}; choose from {', '.join(STUDIES)}")
  out_dir = args.out or (tempfile.mkdtemp(prefix="ablation_") if args.quick else COMMITTED_RESULTS)
  check_out_dir(out_dir, args.quick)
  cache = args.compile_cache or os.path.join(args.workdir, "jax_cache")
  configure_jax(settings, None if cache == "none" else os.path.abspath(cache))
  start = time.perf_counter()
  results = {}
  for study in studies:
    results[study] = run_study(study, settings, out_dir, args.workdir)
    print(f"\n### {STUDY_TITLES[study]}\n\n{markdown_table(results[study])}\n")
  print(f"results in {out_dir} ({time.perf_counter() - start:.0f} s wall)")
  return results


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
