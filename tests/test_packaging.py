"""The package as a user installs it: the recipes of configs/ ship as `mobilenet_jax.configs` and are
found from any directory, the extras match pyproject.toml and requirements.txt, and a command whose
extra is missing says in one line what to install."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib

import pytest

from mobilenet_jax import extras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
  PYPROJECT = tomllib.load(f)["project"]

# What `python -m mobilenet_jax.main` parses, in a process started elsewhere.
MAIN_FLAGS = textwrap.dedent("""
    import sys
    from mobilenet_jax import main
    main.FLAGS(sys.argv)
    import mobilenet_jax, mobilenet_jax.configs
    config = main.FLAGS.config
    print(mobilenet_jax.configs.__file__, config.model.name, config.model.width_multiplier,
          config.num_train_steps)
    """)


def run_python(code, *args, cwd, env=None):
  return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def requirement_name(requirement):
  return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]


def test_non_editable_install_finds_its_configs_from_another_directory(tmp_path):
  """`pip install .` (not editable; here into a folder, offline): main's default and a shipped
  recipe load from a directory outside the repository, from the installed copy."""
  source = tmp_path / "source"   # a copy, so the build leaves nothing in the repository
  source.mkdir()
  for name in ("pyproject.toml", "setup.py", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  for folder in ("mobilenet_jax", "configs"):
    shutil.copytree(os.path.join(ROOT, folder), source / folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
  site = tmp_path / "site"
  install = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
       "--no-index", "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
  assert install.returncode == 0, install.stderr
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {**os.environ, "PYTHONPATH": str(site)}
  default = run_python(MAIN_FLAGS, "--workdir=w", cwd=elsewhere, env=env)
  assert default.returncode == 0, default.stderr
  assert default.stdout.split() == [str(site / "mobilenet_jax" / "configs" / "__init__.py"),
                                    "mobilenet_v2", "0.5", "-1"]
  for spec in ("mobilenet_v2.py:width=0.75", "configs/mobilenet_v2.py:width=0.75",
               "mobilenet_v2:width=0.75"):
    recipe = run_python(MAIN_FLAGS, "--workdir=w", f"--config={spec}",
                        "--config.num_train_steps=2", cwd=elsewhere, env=env)
    assert recipe.returncode == 0, recipe.stderr
    assert recipe.stdout.split()[1:] == ["mobilenet_v2", "0.75", "2"]


def test_readme_notebook_snippet_runs_from_another_directory(tmp_path):
  readme = open(os.path.join(ROOT, "README.md")).read()
  snippet = re.search(r"\*\*In a notebook\*\*.*?```python\n(.*?)```", readme, re.S).group(1)
  assert "mobilenet_jax.configs" in snippet
  # The training itself is tested elsewhere: here it records what it was given.
  stub = ("from mobilenet_jax import train\n"
          "train.train_and_evaluate = lambda config, workdir: {'config': config, 'workdir': workdir}\n")
  check = "\nprint(results['config'].model.name, results['config'].model.expansion, results['workdir'])\n"
  result = run_python(stub + snippet + check, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["mobilenet_v2", "4.0", "runs/t4"]


def test_extras_list_what_pyproject_declares():
  for extra, modules in extras.EXTRAS.items():
    declared = [requirement_name(r) for r in PYPROJECT["optional-dependencies"][extra]]
    assert sorted(declared) == sorted(modules), extra


def test_requirements_txt_is_the_package_with_its_train_extra():
  lines = open(os.path.join(ROOT, "requirements.txt")).read().splitlines()
  pinned = {re.sub(r"\s+", "", line.split("#")[0]) for line in lines} - {""}
  declared = {r.replace(" ", "") for r in PYPROJECT["dependencies"]
              + PYPROJECT["optional-dependencies"]["train"]}
  assert pinned == declared


@pytest.mark.parametrize("command, hidden, extra", [
    ("mobilenet_jax.main", "ml_collections", "train"),
    ("mobilenet_jax.launch", "tensorflow_datasets", "train"),
    ("mobilenet_jax.evaluate", "ml_collections", "train"),
    ("mobilenet_jax.convert", "ml_collections", "train"),
    ("mobilenet_jax.export", "onnxruntime", "train,export"),
])
def test_a_missing_extra_is_one_line_naming_the_install(tmp_path, command, hidden, extra):
  """`python -m COMMAND` with one package of its extra made unimportable (a sitecustomize on the
  path puts None in its sys.modules entry, as for a package that is not installed)."""
  (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{hidden!r}] = None\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
  result = subprocess.run([sys.executable, "-m", command, "--workdir=w"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
  message = result.stderr.splitlines()[-1]   # after any log lines of TensorFlow's import
  assert message.startswith(f"python -m {command} needs"), result.stderr
  assert message.endswith(f'pip install -e ".[{extra}]"')
