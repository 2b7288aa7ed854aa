"""Pretrained-weight import: torchvision, timm and Keras MobileNets give the same logits here.

Every reference is built with random weights *and* random BatchNorm statistics (nothing is
downloaded), converted, and run on random images in inference mode; logits must agree to 1e-4
(float32). Most cases run at small resolutions, a few at 224 and 193. Even sizes matter: there TF
SAME pads stride-2 layers asymmetrically (0, 1) where PyTorch pads (1, 1); on odd maps the two agree
(test_wrong_padding_or_epsilon_is_detected shows the comparison catches both traps). Keras runs on
the JAX backend (tests/conftest.py).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
keras = pytest.importorskip("keras")

from mobilenet_jax.convert import (ConversionError, convert_torch, from_keras,  # noqa: E402
                                   from_torch)
from mobilenet_jax.convert.cli import main as convert_main  # noqa: E402
from mobilenet_jax.pretrained import load_pretrained, read_model_file  # noqa: E402
from mobilenet_jax.models.registry import create_model  # noqa: E402
from mobilenet_jax.compute import conv_norm_act_for  # noqa: E402
from mobilenet_jax.models.layers import ConvNormAct  # noqa: E402

TOLERANCE = 1e-4
# Random deep networks have logits anywhere from 0.01 to 1000; the classifier of each reference is
# scaled so that its logits are O(1) like a trained network's, where an absolute 1e-4 is a strict
# relative test (a wrong padding or BatchNorm epsilon moves them by 1e-3 or more).
LOGIT_STD = 3.0


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module", autouse=True)
def single_threaded_torch():
  """torch's tiny forward passes run far slower with one thread per core on a busy machine."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def random_value(kind: str, shape, fan_in: int, rng: np.random.RandomState) -> np.ndarray:
  """Random weights that keep activations O(1) (He-normal kernels) and make BatchNorm matter."""
  value = {"gamma": lambda: rng.uniform(0.5, 1.5, shape),
           "beta": lambda: rng.normal(0, 0.2, shape),
           "bias": lambda: rng.normal(0, 0.2, shape),
           "mean": lambda: rng.normal(0, 0.2, shape),
           "var": lambda: rng.uniform(0.5, 2.0, shape),
           "kernel": lambda: rng.normal(0, np.sqrt(2.0 / fan_in), shape)}[kind]()
  return value.astype(np.float32)


def randomize_torch(module, seed: int = 0):
  """Every float tensor of `module`'s state dict replaced by random values (in place); eval mode."""
  rng, state = np.random.RandomState(seed), {}
  for key, tensor in module.state_dict().items():
    shape, suffix = tuple(tensor.shape), key.rsplit(".", 1)[-1]
    if suffix == "num_batches_tracked":
      state[key] = tensor
      continue
    if tensor.ndim > 1:
      kind = "kernel"
    else:  # 1-D weights of these networks are BatchNorm scales
      kind = {"weight": "gamma", "bias": "bias", "running_mean": "mean",
              "running_var": "var"}[suffix]
    state[key] = torch.from_numpy(random_value(kind, shape, int(np.prod(shape[1:])), rng))
  module.load_state_dict(state)
  return module.eval()


def torch_logits(module, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return module(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@functools.partial(jax.jit, static_argnums=0)
def our_logits(model, variables, images):
  return model.apply(variables, images, train=False)


def images(size: int, batch: int = 1, seed: int = 1) -> np.ndarray:
  return np.random.RandomState(seed).normal(0, 1, (batch, size, size, 3)).astype(np.float32)


def assert_same(reference: np.ndarray, ours) -> None:
  ours = np.asarray(ours)
  assert ours.shape == reference.shape
  assert reference.std() > 0.1, "reference outputs too small for the comparison to mean anything"
  np.testing.assert_allclose(ours, reference, rtol=0, atol=TOLERANCE)


def bn_epsilons(module) -> set:
  return {m.eps for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


# ----------------------------------------------------------------------------- torchvision, timm

TORCH_CASES = [
    # (library, arch, constructor options, resolution, batch)
    ("torchvision", "mobilenet_v2", {}, 224, 1),
    ("torchvision", "mobilenet_v3_large", {"width_mult": 0.75}, 96, 1),
    ("torchvision", "mobilenet_v3_small", {"width_mult": 0.5}, 193, 1),
    ("timm", "mobilenetv1_100", {}, 64, 2),
    ("timm", "mobilenetv2_050", {}, 65, 2),
    ("timm", "mobilenetv3_large_100", {}, 64, 2),
    ("timm", "mobilenetv3_small_100", {"num_classes": 0}, 65, 2),   # headless
    ("timm", "tf_mobilenetv3_large_075", {}, 96, 2),
    ("timm", "tf_mobilenetv3_large_minimal_100", {}, 66, 2),   # even stem input, odd after
    ("timm", "tf_mobilenetv3_small_minimal_100", {}, 64, 2),
]


def build_torch(library: str, arch: str, options: dict, size: int):
  if library == "torchvision":
    module = getattr(torchvision.models, arch)(weights=None, **options)
  else:
    module = timm.create_model(arch, pretrained=False, **options)
  module = randomize_torch(module)
  linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
  if linears:   # the classifier: scale it so that the logits have std ~ LOGIT_STD
    scale = LOGIT_STD / torch_logits(module, images(size)).std()
    with torch.no_grad():
      linears[-1].weight.mul_(float(scale))
      linears[-1].bias.mul_(float(scale))
  return module


@pytest.fixture(scope="module")
def tf_small_minimal():
  return build_torch("timm", "tf_mobilenetv3_small_minimal_100", {}, 64)


@pytest.mark.parametrize("library,arch,options,size,batch", TORCH_CASES,
                         ids=[f"{c[1]}-{c[3]}" for c in TORCH_CASES])
def test_torch_logits_match(library, arch, options, size, batch):
  reference = build_torch(library, arch, options, size)
  model, variables = from_torch(reference.state_dict(), arch, compute="xla")
  assert {model.bn_epsilon} == bn_epsilons(reference)   # the epsilon the reference really uses
  if "width_mult" in options:   # torchvision's width is found from the shapes
    assert model.width_multiplier == options["width_mult"]
    assert model.width_rule == "torchvision"
  x = images(size, batch)
  assert_same(torch_logits(reference, x), our_logits(model, variables, x))


def test_default_compute_matches_too():
  reference = build_torch("timm", "tf_mobilenetv3_large_075", {}, 96)
  model, variables = from_torch(reference.state_dict(), "tf_mobilenetv3_large_075")
  assert model.conv_norm_act is (conv_norm_act_for("auto") or ConvNormAct)   # compute="auto"
  x = images(96)
  assert_same(torch_logits(reference, x), our_logits(model, variables, x))


def test_wrong_padding_or_epsilon_is_detected(tf_small_minimal):
  model, variables = from_torch(tf_small_minimal.state_dict(), "tf_mobilenetv3_small_minimal_100",
                                compute="xla")
  x = images(64, 2)
  reference = torch_logits(tf_small_minimal, x)
  for wrong in (model.clone(padding="symmetric"), model.clone(bn_epsilon=1e-5)):
    assert np.abs(np.asarray(our_logits(wrong, variables, x)) - reference).max() > 100 * TOLERANCE


def test_numpy_state_dict_and_conversion_options(tf_small_minimal):
  state = {k: v.numpy() for k, v in tf_small_minimal.state_dict().items()}
  conversion = convert_torch(state, "tf_mobilenetv3_small_minimal_100.in1k")
  assert conversion.model_name == "mobilenet_v3_small_minimal"
  assert conversion.options == {"padding": "same", "bn_epsilon": 1e-3, "width_rule": "tf",
                                "num_classes": 1000, "width_multiplier": 1.0}
  with pytest.raises(ValueError, match="fixed by the converted weights"):
    conversion.model(num_classes=10)


def test_keys_missing_unexpected_and_misshapen_are_listed(tf_small_minimal):
  state = {k: v.numpy() for k, v in tf_small_minimal.state_dict().items()}
  del state["blocks.2.1.conv_dw.weight"]
  state["blocks.9.0.conv_pw.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  state["blocks.0.0.bn1.running_var"] = np.ones(17, np.float32)
  with pytest.raises(ConversionError) as error:
    from_torch(state, "tf_mobilenetv3_small_minimal_100")
  message = str(error.value)
  assert "missing keys (1)" in message and "blocks.2.1.conv_dw.weight" in message
  assert "unexpected keys (1)" in message and "blocks.9.0.conv_pw.weight" in message
  assert "shape mismatches (1)" in message and "blocks.0.0.bn1.running_var (17,)" in message


def test_wrong_arch_for_weights_is_an_error(tf_small_minimal):
  with pytest.raises(ConversionError, match="do not fit mobilenet_v3_large"):
    from_torch(tf_small_minimal.state_dict(), "tf_mobilenetv3_large_100")


@pytest.mark.parametrize("arch,match", [
    ("resnet50", "unknown arch"),
    ("mobilenetv2_110d", "cannot be represented"),
    ("mobilenetv1_100h", "cannot be represented"),
    ("mobilenetv3_rw", r"mobilenetv3_rw cannot be represented by our models: its first block has no "
                       r"residual, its SE uses the block's activation"),
    ("mobilenetv3_100", "unknown arch"),
])
def test_unknown_or_unsupported_arch(arch, match):
  with pytest.raises(ValueError, match=match):
    from_torch({}, arch)


def test_cli_round_trip_safetensors(tf_small_minimal, tmp_path):
  from safetensors.torch import save_file

  weights = tmp_path / "model.safetensors"
  save_file(tf_small_minimal.state_dict(), str(weights))
  out = tmp_path / "converted"
  assert convert_main(["--source=timm:tf_mobilenetv3_small_minimal_100", f"--weights={weights}",
                       f"--out={out}"]) == 0
  name, options, variables = load_pretrained(str(out))
  model = create_model(name, **options, compute="xla")
  x = images(64, 2)
  assert_same(torch_logits(tf_small_minimal, x), our_logits(model, variables, x))
  # timm's eval recipe for its tf_ ports (pretrained_cfg): bilinear, crop_pct 0.875, mean/std 0.5.
  assert read_model_file(str(out))["preprocessing"] == {
      "style": "resize_crop", "resolution": 224, "normalization": "inception",
      "crop_fraction": 0.875, "resize_size": 256, "interpolation": "bilinear"}
  # A second conversion into the same directory refuses to overwrite it.
  assert convert_main(["--source=timm:tf_mobilenetv3_small_minimal_100", f"--weights={weights}",
                       f"--out={out}"]) == 1


def test_round_trip_convert_cli_init_from_gives_the_same_logits(tmp_path):
  """timm weights -> `python -m mobilenet_jax.convert` -> `init_from` in the training job: its
  evaluation on the held-out digits equals the PyTorch model's on the same images."""
  from safetensors.torch import save_file
  from mobilenet_jax import data, train
  from mobilenet_jax.train import init_from

  reference = build_torch("timm", "tf_mobilenetv3_small_minimal_100", {"num_classes": 10}, 32)
  weights, out = tmp_path / "model.safetensors", tmp_path / "converted"
  save_file(reference.state_dict(), str(weights))
  assert convert_main(["--source=timm:tf_mobilenetv3_small_minimal_100", f"--weights={weights}",
                       f"--out={out}"]) == 0
  config = train.base_config()
  config.model.name = "mobilenet_v3_small_minimal"
  config.model.padding, config.model.bn_epsilon = "same", 1e-3   # the TF port's
  config.dataset.name = "digits"
  config.resolution, config.batch_size = 32, 64
  config.eval_only, config.init_from = True, str(out)
  config.tensorboard, config.progress_bar = False, "off"
  result = train.train_and_evaluate(config, str(tmp_path / "run"))

  losses, correct = [], []
  # The job feeds the images the weights expect (model.json records timm's inception mean/std).
  resolved = init_from.resolve_config(config).config
  assert resolved.dataset.normalization == "inception"
  for batch in data.create_eval_iterator(resolved, local_batch_size=64):
    logits = torch_logits(reference, batch["image"])[batch["mask"]]
    labels = batch["label"][batch["mask"]]
    losses.append(torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                    torch.from_numpy(labels).long(),
                                                    reduction="none").numpy())
    correct.append(logits.argmax(-1) == labels)
  losses, correct = np.concatenate(losses), np.concatenate(correct)
  assert result["eval_examples"] == len(losses) == 360
  assert result["eval_loss"] == pytest.approx(float(np.mean(losses, dtype=np.float64)), rel=1e-5)
  assert abs(result["eval_top1"] - float(np.mean(correct))) <= 1 / 360  # a near-tie may flip one

  config.model.padding = "symmetric"   # loads without a shape error, but would score differently
  with pytest.raises(ValueError, match="padding='same'.*--config.model.padding=same"):
    train.train_and_evaluate(config, str(tmp_path / "run_symmetric"))


def test_cli_converts_a_torchvision_pth(tmp_path):
  """The README's command: `--source=torchvision:mobilenet_v2 --weights=....pth` (torch.save of a
  state dict; the width is found from the shapes). A training checkpoint holding the state dict
  under 'state_dict' converts to the same variables."""
  reference = build_torch("torchvision", "mobilenet_v2", {"width_mult": 0.5}, 64)
  torch.save(reference.state_dict(), tmp_path / "mobilenet_v2.pth")
  out = tmp_path / "converted"
  assert convert_main(["--source=torchvision:mobilenet_v2",
                       f"--weights={tmp_path / 'mobilenet_v2.pth'}", f"--out={out}"]) == 0
  name, options, variables = load_pretrained(str(out))
  assert (name, options["width_multiplier"]) == ("mobilenet_v2", 0.5)
  assert (options["padding"], options["bn_epsilon"]) == ("symmetric", 1e-5)
  x = images(64, 2)
  assert_same(torch_logits(reference, x), our_logits(create_model(name, **options), variables, x))

  torch.save({"state_dict": reference.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
  assert convert_main(["--source=torchvision:mobilenet_v2", f"--weights={tmp_path / 'checkpoint.pt'}",
                       f"--out={tmp_path / 'from_checkpoint'}"]) == 0
  _, _, again = load_pretrained(str(tmp_path / "from_checkpoint"))
  jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_cli_errors(tmp_path, capsys):
  assert convert_main(["--source=caffe:mobilenet", "--weights=x.pth", f"--out={tmp_path}"]) == 1
  assert "--source must be one of" in capsys.readouterr().err
  assert convert_main(["--source=timm:mobilenetv2_100", f"--weights={tmp_path}/none.safetensors",
                       f"--out={tmp_path}/out"]) == 1
  assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Keras

def build_keras(constructor: str, size: int, batch: int = 1, seed: int = 0, **options):
  """A Keras application with random weights and BatchNorm statistics, built without running
  Keras' initializers (one XLA compilation per weight shape on the JAX backend: the slow part).
  The classifier is scaled on `batch` images of `size`, the shape the test then runs."""
  rng = np.random.RandomState(seed)
  with keras.StatelessScope():   # variables are created uninitialized ...
    model = getattr(keras.applications, constructor)(input_shape=(size, size, 3), weights=None,
                                                     **options)
    for variable in model.weights:   # ... and take these values when the scope exits
      layer, name = variable.path.split("/")
      if name == "kernel":
        shape = variable.shape
        depthwise = type(model.get_layer(layer)).__name__ == "DepthwiseConv2D"
        fan_in = int(np.prod(shape[:2])) if depthwise else int(np.prod(shape[:-1]))
        value = random_value("kernel", shape, fan_in, rng)
      else:
        kind = {"moving_mean": "mean", "moving_variance": "var"}.get(name, name)
        value = random_value(kind, variable.shape, 1, rng)
      variable._initializer = lambda shape, dtype=None, value=value: value
  classifier = [layer for layer in model.layers if layer.name in ("conv_preds", "predictions",
                                                                  "logits")]
  if classifier:   # scaled like the torch references' (LOGIT_STD)
    builtin_rescaling = any(type(layer).__name__ == "Rescaling" for layer in model.layers)
    x = uint8_images(size, batch)
    x = x if builtin_rescaling else tf_style(x)
    scale = LOGIT_STD / keras_logits(model, x).std()
    for variable in classifier[0].weights:
      variable.assign(variable.numpy() * scale)
  return model


@functools.lru_cache(maxsize=None)
def _keras_forward(model):
  return jax.jit(lambda trainable, other, x: model.stateless_call(trainable, other, x,
                                                                   training=False)[0])


def keras_logits(model, x: np.ndarray) -> np.ndarray:
  return np.asarray(_keras_forward(model)([v.value for v in model.trainable_variables],
                                          [v.value for v in model.non_trainable_variables], x))


def tf_style(x_0_255: np.ndarray) -> np.ndarray:
  return x_0_255 / 127.5 - 1.0   # Keras V1/V2 preprocess_input ("tf" mode); V3's Rescaling layer


def uint8_images(size: int, batch: int = 1) -> np.ndarray:
  return np.random.RandomState(2).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_v1():
  return build_keras("MobileNet", 224, alpha=0.5, classifier_activation=None)


def test_keras_v1_alpha050_224(keras_v1):
  model, variables = from_keras(keras_v1, compute="xla")
  assert (model.width_multiplier, model.num_classes, model.padding) == (0.5, 1000, "keras")
  x = tf_style(uint8_images(224))
  assert_same(keras_logits(keras_v1, x), our_logits(model, variables, x))


def test_keras_v1_at_an_odd_size():
  """Keras V1 pads its stride-2 depthwise inputs (0, 1) then takes 'valid' whatever the size; TF
  SAME pads (1, 1) at odd sizes. The converted model (padding="keras") gives Keras's logits at
  193x193, with the CPU kernels too; with padding="same" the logits differ."""
  reference = build_keras("MobileNet", 193, alpha=0.5, classifier_activation=None)
  model, variables = from_keras(reference)
  x = tf_style(uint8_images(193))
  want = keras_logits(reference, x)
  assert_same(want, our_logits(model, variables, x))
  same = our_logits(model.clone(padding="same"), variables, x)
  assert not np.allclose(same, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_keras_v2_alpha075_1001_classes_drop_background():
  reference = build_keras("MobileNetV2", 97, batch=2, alpha=0.75, classes=1001,
                          classifier_activation=None)
  model, variables = from_keras(reference, compute="xla")
  assert (model.width_multiplier, model.num_classes) == (0.75, 1000)
  x = tf_style(uint8_images(97, 2))
  assert_same(keras_logits(reference, x)[:, 1:], our_logits(model, variables, x))


def test_keras_v3_large_224_with_builtin_preprocessing():
  reference = build_keras("MobileNetV3Large", 224, classifier_activation=None,
                          include_preprocessing=True)
  model, variables = from_keras(reference, compute="xla")
  assert (model.variant, model.minimal, model.width_multiplier) == ("large", False, 1.0)
  x = uint8_images(224)   # Keras rescales 0-255 itself; ours takes [-1, 1]
  assert_same(keras_logits(reference, x), our_logits(model, variables, tf_style(x)))


def test_keras_v3_small_minimal_headless_alpha075():
  reference = build_keras("MobileNetV3Small", 64, batch=2, alpha=0.75, minimalistic=True,
                          include_top=False, pooling="avg", include_preprocessing=False)
  model, variables = from_keras(reference, compute="xla")
  assert (model.minimal, model.num_classes, model.head_features) == (True, 0, 0)
  assert model.width_multiplier == 0.75
  x = tf_style(uint8_images(64, 2))
  assert_same(keras_logits(reference, x), our_logits(model, variables, x))


def test_keras_not_a_mobilenet():
  other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
  with pytest.raises(ConversionError, match="is not a Keras applications MobileNet"):
    from_keras(other)


def test_keras_missing_and_unknown_weights_are_listed(keras_v1):
  """A Keras MobileNet with a layer's weights gone and another model's layer added (a user's own
  head): the error lists both by their Keras names."""
  from mobilenet_jax.convert.assemble import convert_family
  from mobilenet_jax.convert.keras_source import keras_family, keras_weights

  source = keras_weights(keras_v1)
  del source["conv_pw_5_bn/gamma"]
  source["my_head/kernel"] = np.zeros((1000, 10), np.float32)
  with pytest.raises(ConversionError) as error:
    convert_family(source, keras_family(keras_v1, source))
  message = str(error.value)
  assert "missing keys (1):\n    conv_pw_5_bn/gamma" in message
  assert "unexpected keys (1):\n    my_head/kernel" in message


def test_keras_cli_round_trip(keras_v1, tmp_path):
  weights = tmp_path / "v1.weights.h5"
  keras_v1.save_weights(str(weights))
  out = tmp_path / "converted"
  assert convert_main(["--source=keras:mobilenet", "--alpha=0.5", f"--weights={weights}",
                       f"--out={out}"]) == 0
  name, options, variables = load_pretrained(str(out))
  assert name == "mobilenet_v1" and options["width_multiplier"] == 0.5
  assert read_model_file(str(out))["preprocessing"]["style"] == "central_crop"   # TF-slim's
  model = create_model(name, **options, compute="xla")
  x = tf_style(uint8_images(224))
  assert_same(keras_logits(keras_v1, x), our_logits(model, variables, x))
