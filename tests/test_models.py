"""Model zoo: shapes, options, blocks, errors and the Flax contracts (NNX: test_readme_nnx.py)."""

import functools

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import mobilenet_jax as mj
from mobilenet_jax.models import mobilenet_v2, mobilenet_v3
from mobilenet_jax.models.initialization import trace_init

ALL = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
       "mobilenet_v3_large_minimal", "mobilenet_v3_small_minimal")


_VARIABLE_SHAPES = {}  # repr(model) -> its variables' shapes


def variable_shapes(model):
  """The shapes `model.init` gives (shape inference only), traced once per network: they do not
  depend on the input size (global pooling), and tracing the initialisers is what costs."""
  key = repr(model)
  if key not in _VARIABLE_SHAPES:
    x = jnp.zeros((1, 32, 32, 3))
    _VARIABLE_SHAPES[key] = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  return _VARIABLE_SHAPES[key]


def shapes(model, resolution=224, **kwargs):
  """Variable and output shapes without running anything (shape inference only)."""
  x = jnp.zeros((2, resolution, resolution, 3))
  variables = variable_shapes(model)
  return variables, jax.eval_shape(lambda v: model.apply(v, x, train=False, **kwargs), variables)


def test_list_models_has_the_required_names():
  assert set(ALL) <= set(mj.list_models())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("resolution", [224, 193, 160, 128, 96, 32])
def test_logit_shapes_every_model_and_resolution(name, resolution):
  model = mj.create_model(name, num_classes=7)
  variables, out = shapes(model, resolution)
  assert out.shape == (2, 7)
  assert set(variables) == {"params", "batch_stats"}


@pytest.mark.parametrize("name,channels", [
    ("mobilenet_v1", {4: 128, 8: 256, 16: 512, 32: 1024}),
    ("mobilenet_v2", {4: 24, 8: 32, 16: 96, 32: 1280}),
    ("mobilenet_v3_large", {4: 24, 8: 40, 16: 112, 32: 960}),
    ("mobilenet_v3_small", {4: 16, 8: 24, 16: 48, 32: 576}),
])
def test_feature_mode_strides_and_channels(name, channels):
  model = mj.create_model(name)
  assert model.feature_channels() == channels
  for resolution in (224, 193):
    _, feats = shapes(model, resolution, features=True)
    assert sorted(feats) == [4, 8, 16, 32]
    for stride, f in feats.items():
      size = -(-resolution // stride)  # "same" padding: ceil(H / stride)
      assert f.shape == (2, size, size, channels[stride]), (stride, f.shape)


@pytest.mark.parametrize("name,width", [("mobilenet_v1", 1024), ("mobilenet_v2", 1280),
                                        ("mobilenet_v3_large", 1280), ("mobilenet_v3_small", 1024)])
def test_headless_returns_pooled_features(name, width):
  _, out = shapes(mj.create_model(name, num_classes=0))
  assert out.shape == (2, width)
  _, out = shapes(mj.create_model("mobilenet_v3_large", num_classes=0, head_features=0))
  assert out.shape == (2, 960)


@pytest.fixture(scope="module")
def tiny_v3():
  model = mj.create_model("mobilenet_v3_small", num_classes=5, width_multiplier=0.35)
  x = jax.random.normal(jax.random.key(1), (4, 48, 48, 3))
  return model, mj.init_variables(model, resolution=48, seed=0), x


def test_jit_train_step_gradients_reach_every_parameter(tiny_v3):
  model, variables, x = tiny_v3
  labels = jnp.arange(4) % 5

  @jax.jit
  def loss_and_grads(params, batch_stats):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, updates), grads = loss_and_grads(variables["params"], variables["batch_stats"])
  assert np.isfinite(loss)
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  assert not dead, f"parameters without gradient: {dead}"
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), updates["batch_stats"],
                       variables["batch_stats"])
  assert all(jax.tree.leaves(moved)), "every BatchNorm running statistic must update in train mode"


def test_bf16_compute_keeps_float32_params_and_statistics(tiny_v3):
  model, _, x = tiny_v3
  model = model.clone(dtype=jnp.bfloat16)
  variables = mj.init_variables(model, resolution=48, seed=0)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32

  @jax.jit
  def run(variables):
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": jax.random.key(0)})
    bf16 = model.apply(variables, x, train=False)
    f32 = model.clone(dtype=None).apply(variables, x, train=False)
    return train_logits, updates, bf16, f32

  train_logits, updates, bf16, f32 = run(variables)
  assert train_logits.dtype == bf16.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float32
  np.testing.assert_allclose(bf16.astype(jnp.float32), f32, atol=0.1, rtol=0.1)


def test_param_dtype_is_respected():
  model = mj.create_model("mobilenet_v3_small", width_multiplier=0.35, param_dtype=jnp.bfloat16)
  variables, _ = shapes(model, 32)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}


def test_inference_is_deterministic_and_train_mode_uses_dropout_rng(tiny_v3):
  model, variables, x = tiny_v3
  apply = jax.jit(functools.partial(model.apply, train=False))
  chex.assert_trees_all_equal(apply(variables, x), apply(variables, x))
  with pytest.raises(flax.errors.InvalidRngError, match='needs PRNG for "dropout"'):
    jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, x)


def _residual_blocks(spec):
  in_features, residual = spec.stem.features, []
  for i, layer in enumerate(spec.blocks):
    if layer.stride == 1 and in_features == layer.features:
      residual.append(i)
    in_features = layer.features
  return residual


def test_residual_placement_matches_the_tables():
  # V2 Table 2: the first block of each stage changes width or stride; the repeats are residual.
  assert _residual_blocks(mobilenet_v2.mobilenet_v2_spec()) == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
  # V3-Large Table 1 rows 1, 3, 5, 6, 8, 9, 10, 12, 14, 15 (1-based) keep width at stride 1.
  assert _residual_blocks(mobilenet_v3.mobilenet_v3_spec("large")) == [0, 2, 4, 5, 7, 8, 9, 11, 13,
                                                                       14]
  assert _residual_blocks(mobilenet_v3.mobilenet_v3_spec("small")) == [2, 4, 5, 7, 9, 10]


@pytest.mark.parametrize("strides,features,residual", [(1, 8, True), (2, 8, False),
                                                       (1, 16, False)])
def test_inverted_residual_adds_the_input_only_when_shapes_match(strides, features, residual):
  block = mj.InvertedResidual(features, expansion=4, strides=strides)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  variables = block.init(jax.random.key(1), x)
  # Zero the projection's BatchNorm so the block's own branch outputs exactly zero.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if "project" in jax.tree_util.keystr(p) and "norm" in
      jax.tree_util.keystr(p) else v, variables["params"])
  out = block.apply({**variables, "params": params}, x)
  if residual:
    np.testing.assert_array_equal(out, x)
  else:
    assert out.shape[-1] == features and not np.any(out)


def test_inverted_residual_linear_bottleneck_and_optional_expansion():
  x = jnp.ones((1, 8, 8, 16))
  params = mj.InvertedResidual(16, expansion=1).init(jax.random.key(0), x)["params"]
  assert set(params) == {"depthwise", "project"}  # t=1: no expansion layer (V2 Table 2, row 1)
  params = mj.InvertedResidual(24, expansion=6).init(jax.random.key(0), x)["params"]
  assert params["expand"]["conv"]["kernel"].shape == (1, 1, 16, 96)
  assert params["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 96)
  assert params["project"]["conv"]["kernel"].shape == (1, 1, 96, 24)


def test_squeeze_excite_widths_of_v3():
  def se_widths(spec):
    return [b.se_features for b in spec.blocks if b.se_features]
  # make_divisible(expanded / 4, 8) of the expanded widths in Tables 1-2.
  assert se_widths(mobilenet_v3.mobilenet_v3_spec("large")) == [24, 32, 32, 120, 168, 168, 240, 240]
  assert se_widths(mobilenet_v3.mobilenet_v3_spec("small")) == [8, 24, 64, 64, 32, 40, 72, 144, 144]
  assert se_widths(mobilenet_v3.mobilenet_v3_spec("large", minimal=True)) == []
  # The module itself: reduce from the expanded channels, hard-sigmoid gate in [0, 1].
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 72))
  se = mj.SqueezeExcite()
  params = se.init(jax.random.key(1), x)["params"]
  assert params["reduce"]["kernel"].shape == (72, 24)
  assert params["expand"]["kernel"].shape == (24, 72)
  gate = se.apply({"params": params}, jnp.ones_like(x))
  assert np.all((gate >= 0) & (gate <= 1))


def test_v3_minimal_form_uses_relu_3x3_and_no_se():
  for variant in ("large", "small"):
    spec = mobilenet_v3.mobilenet_v3_spec(variant, minimal=True)
    assert {b.kernel_size for b in spec.blocks} == {3}
    assert {layer.activation for layer in spec.layers} | {spec.head_activation} == {"relu"}


def test_v2_expansion_option():
  base = mobilenet_v2.mobilenet_v2_spec()
  assert [b.expanded_features for b in base.blocks[:3]] == [32, 96, 144]
  four = mobilenet_v2.mobilenet_v2_spec(expansion=4)
  assert [b.expanded_features for b in four.blocks[:3]] == [32, 64, 96]  # t=1 stage kept
  per_stage = mobilenet_v2.mobilenet_v2_spec(expansion=(1, 2, 3, 4, 5, 6, 8))
  assert per_stage.blocks[1].expanded_features == 32      # 16 * 2
  assert per_stage.blocks[-1].expanded_features == 1280   # 160 * 8
  with pytest.raises(ValueError, match="one value per stage"):
    mobilenet_v2.mobilenet_v2_spec(expansion=(6, 6))


@pytest.mark.parametrize("name,options,message", [
    ("mobilenet_v9", {}, "unknown model 'mobilenet_v9'; valid names: mobilenet_v1"),
    ("mobilenet_v2", {"width_multiplier": 0}, "width_multiplier must be > 0"),
    ("mobilenet_v3_large", {"width_multiplier": -0.5}, "width_multiplier must be > 0"),
    ("mobilenet_v2", {"expansion": 0.5}, "expansion must be >= 1"),
    ("mobilenet_v2", {"expansion": (6, 6, 6, 6, 6, 6, 0)}, "expansion must be >= 1"),
    ("mobilenet_v2", {"widht_multiplier": 1.0}, r"unknown option\(s\) \['widht_multiplier'\]"),
    ("mobilenet_v1", {"padding": "valid"}, "padding must be one of"),
    ("mobilenet_v1", {"num_classes": -1}, "num_classes must be >= 0"),
    ("mobilenet_v1", {"dropout_rate": 1.5}, "dropout_rate must be in"),
    ("mobilenet_v3_small", {"compute": "fast"}, "compute must be one of auto, xla, cpu, got 'fast'"),
    ("mobilenet_v3_small", {"kernels": "xla"}, r"unknown option\(s\) \['kernels'\].*'compute'"),
])
def test_bad_options_raise_clear_errors(name, options, message):
  with pytest.raises(ValueError, match=message):
    mj.create_model(name, **options)


def test_images_smaller_than_32_raise():
  model = mj.create_model("mobilenet_v3_small")
  with pytest.raises(ValueError, match="at least 32x32"):
    model.init(jax.random.key(0), jnp.zeros((1, 31, 64, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_symmetric_padding_differs_only_at_stride_two():
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 4))
  for stride, equal in ((1, True), (2, False)):
    outs = []
    for padding in ("same", "symmetric"):
      unit = mj.ConvNormAct(4, 3, stride, depthwise=True, padding=padding,
                            norm=functools.partial(nn.BatchNorm, use_running_average=True))
      variables = unit.init(jax.random.key(1), x)
      outs.append(unit.apply(variables, x))
    assert np.allclose(outs[0], outs[1]) == equal


class UserDetector(nn.Module):
  """A user's own Linen module that reuses MobileNet blocks inside its code."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(16, (3, 3), strides=2, name="stem")(x)
    x = mj.InvertedResidual(24, expansion=4, strides=2, name="ir1")(x, train)
    x = mj.InvertedResidual(24, expansion=3, kernel_size=5, use_se=True,
                            activation=jax.nn.hard_swish, name="ir2")(x, train)
    x = mj.SqueezeExcite(name="extra_se")(x)
    return nn.Dense(3, name="box")(x.mean(axis=(1, 2)))


def test_blocks_compose_inside_a_user_module():
  model = UserDetector()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = trace_init(lambda key: model.init(key, x), jax.random.key(1))()
  assert set(variables["params"]["ir2"]) == {"expand", "depthwise", "se", "project"}
  out, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert out.shape == (2, 3) and "ir1" in updates["batch_stats"]
  # train=True without a mutable batch_stats: BatchNorm's update is refused, not silently dropped
  with pytest.raises(flax.errors.ModifyScopeVariableError,
                     match='"mean" in "/ir1/expand/norm" because collection "batch_stats" is '
                           'immutable'):
    model.apply(variables, x, train=True)


def test_norm_and_activation_are_swappable():
  model = mj.create_model("mobilenet_v3_small", width_multiplier=0.35, num_classes=3,
                          norm_layer=functools.partial(nn.GroupNorm, num_groups=8),
                          activation=jax.nn.silu)
  x = jnp.ones((1, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert "batch_stats" not in variables
  assert "GroupNorm" not in str(variables)  # names stay `norm`, whatever the normalisation
  out = jax.eval_shape(functools.partial(model.apply, train=True), variables, x,
                       rngs={"dropout": jax.random.key(0)})
  assert out.shape == (1, 3)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"])
def test_small_input_keeps_the_weights_and_quadruples_the_map_sizes(name):
  """small_input=1 (stem at stride 1) on 32x32 images is the network on 64x64 images after its
  stem: the same weights, every later map as large, so the same MAdds as the plain network at 64
  (the stem's output is 32x32 either way); small_input=2 also runs the first stride-2 block at
  stride 1."""
  plain = mj.create_model(name, width_multiplier=0.25, num_classes=10)
  small = plain.clone(small_input=1)
  shapes = lambda m, size: jax.tree.map(np.shape, jax.eval_shape(
      lambda: m.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)))
  assert shapes(small, 32) == shapes(plain, 32)
  assert mj.count_params(jax.eval_shape(lambda: small.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))) == mj.count_params(
          jax.eval_shape(lambda: plain.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                            train=False)))
  assert mj.count_madds(small, 32) == mj.count_madds(plain, 64)
  maps = jax.eval_shape(lambda: small.apply(small.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))),
                                            jnp.zeros((1, 32, 32, 3)), features=True))
  assert {s: m.shape[1] for s, m in maps.items()} == {2: 16, 4: 8, 8: 4, 16: 2}
  assert small.feature_channels() == {s // 2: c for s, c in plain.feature_channels().items()}
  twice = plain.clone(small_input=2)
  costs = {c.path: c for c in mj.layer_costs(twice, 32)}
  assert costs["stem/conv"].out_size == (32, 32) and costs["stem/conv"].stride == 1
  assert jax.eval_shape(lambda: twice.apply(twice.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))),
                                            jnp.zeros((1, 8, 8, 3)))).shape == (1, 10)


def test_small_input_madds_by_hand():
  """V1 x0.25 (stem 8, then 3x3 depthwise + 1x1 layers of Table 1 scaled) at 32x32 with the stem
  at stride 1: every map is twice as high and wide as at stride 2, so each convolution's MAdds are
  4x, the classifier's unchanged. By hand from Table 1: stem 3*3*3*8 * 32*32."""
  plain = mj.create_model("mobilenet_v1", width_multiplier=0.25, num_classes=10)
  small = plain.clone(small_input=1)
  classifier = 256 * 10
  stem_small = 3 * 3 * 3 * 8 * 32 * 32
  stem_plain = 3 * 3 * 3 * 8 * 16 * 16
  rest = mj.count_madds(plain, 32) - classifier - stem_plain
  assert mj.count_madds(small, 32) == stem_small + 4 * rest + classifier
  with pytest.raises(ValueError, match="small_input must be 0, 1"):
    mj.create_model("mobilenet_v2", small_input=3)
  with pytest.raises(ValueError, match="at least 16x16"):
    small.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_model_file_written_before_the_compute_rename_still_builds(tmp_path):
  """A checkpoint's model.json from before `kernels` was renamed `compute` still gives its model."""
  import json
  from mobilenet_jax import pretrained
  (tmp_path / pretrained.MODEL_FILE).write_text(json.dumps({
      "format_version": pretrained.FORMAT_VERSION, "model": "mobilenet_v3_small",
      "options": {"kernels": "xla", "num_classes": 10}}))
  meta = pretrained.read_model_file(str(tmp_path))
  assert meta["options"] == {"compute": "xla", "num_classes": 10}
  model = mj.create_model(meta["model"], **meta["options"])
  assert model.conv_norm_act is mj.ConvNormAct and model.num_classes == 10
