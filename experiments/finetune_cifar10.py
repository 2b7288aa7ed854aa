"""The fine-tuning journey on CIFAR-10, measured: released weights -> fine-tune -> int8 file.

    python experiments/finetune_cifar10.py --tflite=tf2_mobilenet_v2_1.0_224_ptq.tflite \
        --data=cifar10-jpeg.tar.gz --workdir=runs/finetune_cifar10

Runs the README's commands, each in its own process, and writes what they measured to
`experiments/results/finetune_cifar10.json` (`--out`):

1. convert the released `.tflite` file into a checkpoint;
2. fine-tune every layer (`configs/finetune.py`), scored by the run on all 10,000 test images;
3. the linear probe (`trainable=head`) and 4. the same network from scratch (random weights, a
   from-scratch learning rate) with the fine-tune's resolution and epochs: what the weights are worth;
5. export the fine-tuned run as a full-integer `.tflite` file calibrated on training images, and
   score it in LiteRT on the same 10,000 test images, beside the float model through the same command.

A step whose workdir already holds its final evaluation is not run again (its figures are read back),
so an interrupted study resumes; `--steps` picks steps. Wall times are those of the step's command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("convert", "finetune", "linear_probe", "scratch", "int8")
# A published transfer figure to put ours beside (its conditions as the source states them).
PUBLISHED = {
    "top1": 0.957,
    "what": "torchvision's ImageNet MobileNetV2 1.0 fine-tuned on CIFAR-10 (model ranking benchmark "
            "of LogME, You et al., ICML 2021), images resized to 224x224; epochs not stated",
    "source": "https://github.com/thuml/Transfer-Learning-Library/blob/master/examples/"
              "model_selection/README.md",
}


def _python(*args: str) -> list[str]:
  return [sys.executable, *args]


def _final_eval(workdir: str) -> dict | None:
  """The last eval record of a run's metrics.jsonl, when it reached its last step."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  records = [json.loads(line) for line in open(path) if line.strip().endswith("}")]
  evals = [r for r in records if "eval_top1" in r]
  config = json.load(open(os.path.join(workdir, "config.json")))
  done = [r for r in evals if r.get("step", 0) >= _total_steps(config, records)]
  return {"final": done[-1] if done else None, "curve": [
      {"step": r["step"], "eval_top1": r["eval_top1"], "elapsed_s": _elapsed(records, r["step"])}
      for r in evals]}


def _total_steps(config: dict, records: list[dict]) -> int:
  if config.get("num_train_steps", -1) > 0:
    return config["num_train_steps"]
  steps = [r["step"] for r in records if "train_loss" in r]
  return max(steps) if steps else 10**12


def _elapsed(records: list[dict], step: int) -> float | None:
  times = [r.get("elapsed_s") for r in records if r.get("step") == step and r.get("elapsed_s")]
  return times[-1] if times else None


def _shown(command: list[str], extracted: str = "") -> str:
  """The command as a user types it: `python`, and the archive's extraction folder as `CIFAR10`."""
  text = shlex.join(["python", *command[1:]] if command[0] == sys.executable else command)
  return text.replace(extracted, "CIFAR10") if extracted else text


def _run(command: list[str], log: str) -> float:
  """Runs `command` with its output in `log`; its wall time in seconds."""
  print("$", shlex.join(command), flush=True)
  start = time.perf_counter()
  with open(log, "a") as f:
    subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tflite", required=True, help="the released MobileNetV2 .tflite file")
  parser.add_argument("--data", required=True, help="CIFAR-10 as train/<class>/ and test/<class>/ "
                      "JPEGs: a folder or an archive of one")
  parser.add_argument("--workdir", default="runs/finetune_cifar10")
  parser.add_argument("--resolution", type=int, default=112)
  parser.add_argument("--epochs", type=float, default=3.0)
  parser.add_argument("--lr", type=float, default=0.003, help="fine-tune peak lr per 64 images")
  parser.add_argument("--scratch_lr", type=float, default=0.05)
  parser.add_argument("--steps", default=",".join(STEPS))
  parser.add_argument("--trials", default="", help="comma-separated workdirs of other runs (e.g. "
                      "another learning rate) whose evaluations to record beside, read only")
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                    "finetune_cifar10.json"))
  args = parser.parse_args()
  steps = args.steps.split(",")
  work = args.workdir   # as given: the recorded commands are the ones to type (from the repository)
  os.makedirs(work, exist_ok=True)
  log = os.path.join(ROOT, work, "study.log")
  results = json.load(open(args.out)) if os.path.isfile(args.out) else {}
  commands = results.setdefault("commands", {})
  checkpoint = os.path.join(work, "v2_tf2")
  recipe = (f"configs/finetune.py:weights={checkpoint},data={args.data},"
            f"resolution={args.resolution},epochs={args.epochs:g}")
  eval_every = ["--config.eval_every_steps=782"]   # once an epoch of CIFAR-10 at batch 64
  runs = {
      "finetune": _python("-m", "mobilenet_jax.main", f"--config={recipe},lr={args.lr:g}",
                          *eval_every, f"--workdir={work}/finetune"),
      "linear_probe": _python("-m", "mobilenet_jax.main", f"--config={recipe},trainable=head",
                              *eval_every, f"--workdir={work}/linear_probe"),
      "scratch": _python("-m", "mobilenet_jax.main",
                         f"--config=configs/finetune.py:data={args.data},resolution="
                         f"{args.resolution},epochs={args.epochs:g},lr={args.scratch_lr:g}",
                         "--config.dataset.normalization=inception",
                         "--config.optimizer.weight_decay=4e-5", *eval_every,
                         f"--workdir={work}/scratch"),
  }
  convert = _python("-m", "mobilenet_jax.convert", "--source=tflite", f"--weights={args.tflite}",
                    f"--out={checkpoint}")
  if "convert" in steps and not os.path.isdir(checkpoint):
    _run(convert, log)
  commands["convert"] = _shown(convert)
  for name, command in runs.items():
    if name not in steps:
      continue
    run_dir = os.path.join(work, name)
    found = _final_eval(run_dir)
    if not (found and found["final"]):
      results[f"{name}_wall_s"] = round(_run(command, log), 1)
      results[f"{name}_wall_from"] = "the command's wall time"
      found = _final_eval(run_dir)
    elif f"{name}_wall_s" not in results:   # a run made by hand: its own clock
      results[f"{name}_wall_s"] = round(found["final"].get("elapsed_s") or
                                        found["curve"][-1]["elapsed_s"] or 0, 1)
      results[f"{name}_wall_from"] = ("metrics.jsonl elapsed_s: from the training loop's start, "
                                      "evaluations included, the process's start-up not")
    commands[name] = _shown(command)
    results[f"{name}_top1"] = found["final"]["eval_top1"]
    results[f"{name}_curve"] = found["curve"]
  if "int8" in steps:
    sys.path.insert(0, ROOT)
    from mobilenet_jax.data import archive

    root = archive.folder_root(args.data)
    int8_file = os.path.join(work, "finetune_int8.tflite")
    export = _python("-m", "mobilenet_jax.export", f"--weights={work}/finetune",
                     "--format=tflite-int8", f"--calibration={root}/train",
                     "--calibration_images=500", f"--out={int8_file}")
    if not os.path.isfile(int8_file):
      _run(export, log)
    scores = {}
    for kind, weights, runtime in (("int8_litert", int8_file, "litert"),
                                   ("float_jax", f"{work}/finetune", "jax")):
      out = os.path.join(work, f"evaluate_{kind}.json")
      command = _python("-m", "mobilenet_jax.evaluate", f"--weights={weights}",
                        f"--images={root}/test", f"--runtime={runtime}", f"--json={out}")
      if not os.path.isfile(out):
        _run(command, log)
      commands[f"evaluate_{kind}"] = _shown(command, root)
      scores[kind] = json.load(open(out))
    commands["export_int8"] = _shown(export, root)
    commands["CIFAR10"] = ("the folder --data extracts to: python -c \"from mobilenet_jax.data import "
                           f"archive; print(archive.folder_root('{args.data}'))\"")
    results["int8_file_bytes"] = os.path.getsize(int8_file)
    results["evaluate_json"] = {k: {key: v[key] for key in v if not isinstance(v[key], list)}
                                for k, v in scores.items()}
    results["int8_litert_top1"] = scores["int8_litert"]["top1"]
    results["float_evaluate_top1"] = scores["float_jax"]["top1"]   # the same images, same command
    float_top = {i["path"]: i["top5"][0] for i in scores["float_jax"]["images"]}
    same = [i["top5"][0] == float_top[i["path"]] for i in scores["int8_litert"]["images"]]
    results["int8_agreement_with_float"] = sum(same) / len(same)
  for trial in filter(None, args.trials.split(",")):
    config = json.load(open(os.path.join(trial, "config.json")))
    found = _final_eval(trial) or {"curve": []}
    results.setdefault("trials", {})[os.path.basename(trial)] = {
        "resolution": config["resolution"], "peak_learning_rate_per_64": config["schedule"]["learning_rate"],
        "epochs": config["num_epochs"], "curve": found["curve"]}
  results["published"] = PUBLISHED
  results.update(
      float_top1=results.get("finetune_top1"), linear_probe_top1=results.get("linear_probe_top1"),
      scratch_top1=results.get("scratch_top1"),
      train_minutes=round(results["finetune_wall_s"] / 60, 1) if "finetune_wall_s" in results
      else results.get("train_minutes"),
      resolution=args.resolution, epochs=args.epochs,
      weights=os.path.basename(args.tflite) + " (TF2 Keras MobileNetV2 1.0, post-training int8, "
              "dequantized to float by `python -m mobilenet_jax.convert --source=tflite`)",
      machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  print(json.dumps({k: v for k, v in results.items() if k.endswith(("top1", "minutes"))}, indent=2))


if __name__ == "__main__":
  main()
