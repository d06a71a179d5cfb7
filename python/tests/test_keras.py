"""resnetc.from_keras without Keras: a stand-in model made of the Keras configs and weights committed under
tests/fixtures/ (what model.to_json() and the model's variables held; see tests/fixtures/make_fixtures.py)."""

import json

import numpy as np
import pytest

import resnetc
from conftest import FIXTURES, KERAS_FIXTURES, FakeModel, read_safetensors, rel_diff

PARAMS = json.loads((FIXTURES / "params.json").read_text())["params"]


def config(name):
    return (FIXTURES / "keras" / f"{name}.json").read_text()


def fake(name, **kw):
    return FakeModel(config(name), read_safetensors(KERAS_FIXTURES[name][1]), **kw)


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_apps", "ops_edge", "tiny_seq"])
def test_from_keras_matches_keras(name, tmp_path):
    spec, weights = tmp_path / f"{name}.yaml", tmp_path / f"{name}.safetensors"
    m = resnetc.from_keras(fake(name), spec, weights)
    assert isinstance(m, resnetc.Model) and m.name == name
    assert m.warnings == [] and m.projections == []
    assert m.params == PARAMS[name]
    _, keras_weights, x, y = KERAS_FIXTURES[name]
    x, y = np.load(x), np.load(y)
    assert rel_diff(m.compile()(x), y) <= 1e-5
    assert rel_diff(m.run_reference(x), y) <= 1e-5
    # What was written: a spec resnetc check accepts, and the Keras weights unchanged.
    assert spec.read_text().startswith(f"# The Keras model `{name}`, converted from its config")
    assert resnetc.check(spec) == []
    got, want = read_safetensors(weights), read_safetensors(keras_weights)
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_the_spec_keeps_names_and_shortcuts(tmp_path):
    resnetc.from_keras(fake("tiny_resnet"), tmp_path / "m.yaml", tmp_path / "m.safetensors")
    lines = [line.strip() for line in (tmp_path / "m.yaml").read_text().splitlines()]
    assert "- {op: add, name: add, inputs: [bn2a_branch2c], shortcut: bn2a_branch1}" in lines
    assert "- {op: add, name: add_1, shortcut: activation_3}" in lines
    assert "- {op: dense, name: fc3, units: 3, activation: softmax}" in lines


def test_tf_keras_2_variable_names(tmp_path):
    """tf.keras 2 names variables `conv1/kernel:0`; the weights keys are `conv1.kernel` all the same."""
    model = fake("tiny_seq", weight_names=lambda layer, w: f"{layer}/{w}:0")
    m = resnetc.from_keras(model, tmp_path / "m.yaml", tmp_path / "m.safetensors")
    _, _, x, y = KERAS_FIXTURES["tiny_seq"]
    assert rel_diff(m.compile()(np.load(x)), np.load(y)) <= 1e-5


def test_batch_norm_without_center_or_scale(tmp_path):
    """BatchNormalization(center=False, scale=False) has no beta or gamma: written as Keras's zeros and ones."""
    cfg = json.loads(config("tiny_seq"))
    for layer in cfg["config"]["layers"]:
        if layer["config"]["name"] == "bn_b":
            layer["config"].update(center=False, scale=False)
    tensors = read_safetensors(KERAS_FIXTURES["tiny_seq"][1])
    del tensors["bn_b.gamma"], tensors["bn_b.beta"]
    m = resnetc.from_keras(FakeModel(json.dumps(cfg), tensors), tmp_path / "m.yaml", tmp_path / "m.safetensors")
    written = read_safetensors(tmp_path / "m.safetensors")
    assert np.array_equal(written["bn_b.gamma"], np.ones(6, np.float32))
    assert np.array_equal(written["bn_b.beta"], np.zeros(6, np.float32))
    assert m.params == PARAMS["tiny_seq"]  # resnetc counts gamma and beta; Keras would count 12 fewer


def test_unsupported_layers_are_refused_and_nothing_is_written(tmp_path):
    cfg = json.loads(config("tiny_seq"))
    for layer in cfg["config"]["layers"]:
        if layer["config"]["name"] == "relu_b":
            layer["class_name"] = "LeakyReLU"
        if layer["config"]["name"] == "conv_a":
            layer["config"]["dilation_rate"] = [2, 2]
    model = FakeModel(json.dumps(cfg), read_safetensors(KERAS_FIXTURES["tiny_seq"][1]))
    spec, weights = tmp_path / "m.yaml", tmp_path / "m.safetensors"
    with pytest.raises(resnetc.SpecError) as e:
        resnetc.from_keras(model, spec, weights)
    msg = str(e.value)
    assert "the Keras model `tiny_seq`: layer `relu_b` (LeakyReLU) is not supported: resnetc converts" in msg
    assert "layer `conv_a` (Conv2D): `dilation_rate` is [2,2]: resnetc convolutions have dilation 1" in msg
    assert len(e.value.errors) == 2
    assert not spec.exists() and not weights.exists()


def test_models_without_a_config(tmp_path):
    class Subclassed:
        name, layers = "sub", []

        def to_json(self):
            raise NotImplementedError("Subclassed models cannot be serialized")

    with pytest.raises(ValueError, match="from_keras needs a Functional or Sequential Keras model"):
        resnetc.from_keras(Subclassed(), tmp_path / "m.yaml", tmp_path / "m.safetensors")


def test_open_input_sizes(tmp_path):
    cfg = json.loads(config("tiny_apps"))
    cfg["config"]["layers"][0]["config"]["batch_shape"] = [None, None, None, 3]
    model = FakeModel(json.dumps(cfg), read_safetensors(KERAS_FIXTURES["tiny_apps"][1]))
    with pytest.raises(resnetc.SpecError, match="resnetc compiles for one image size"):
        resnetc.from_keras(model, tmp_path / "m.yaml", tmp_path / "m.safetensors")
    m = resnetc.from_keras(model, tmp_path / "m.yaml", tmp_path / "m.safetensors", input_shape=(70, 60, 3))
    assert m.input_shape == (70, 60, 3) and m.output_shape == (7,)


def test_weights_of_one_layer_with_the_same_name(tmp_path):
    model = fake("tiny_seq")
    layer = next(l for l in model.layers if l.name == "fc_a")
    layer.weights.append(layer.weights[0])
    with pytest.raises(ValueError, match=r"two weights of layer `fc_a` are both named `fc_a\.(kernel|bias)`"):
        resnetc.from_keras(model, tmp_path / "m.yaml", tmp_path / "m.safetensors")
