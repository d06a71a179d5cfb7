"""Shared helpers of resnetc's Python tests: the repository's fixtures (no Keras needed), and a stand-in for a
Keras model built from a committed Keras config and weights."""

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SPECS = ROOT / "specs"

# name -> (spec or None, weights, x, y): the fixtures tests/fixtures/make_fixtures.py made with Keras.
KERAS_FIXTURES = {
    name: (FIXTURES / f"{name}.yaml", FIXTURES / f"{name}.safetensors", FIXTURES / f"{name}_x.npy",
           FIXTURES / f"{name}_y.npy")
    for name in ["tiny_resnet", "tiny_apps", "ops_edge"]
}
KERAS_FIXTURES["tiny_seq"] = (None, FIXTURES / "keras/tiny_seq.safetensors", FIXTURES / "keras/tiny_seq_x.npy",
                              FIXTURES / "keras/tiny_seq_y.npy")


def read_safetensors(path):
    """A float32 safetensors file as {name: array} (the format is an 8-byte length, a JSON header, the data)."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for key, t in header.items():
        if key == "__metadata__":
            continue
        assert t["dtype"] == "F32", (key, t["dtype"])
        start, end = t["data_offsets"]
        out[key] = np.frombuffer(body[start:end], dtype="<f4").reshape(t["shape"]).copy()
    return out


def rel_diff(got, want):
    """Largest |got - want| relative to the largest |want|."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


class FakeVariable:
    """A Keras variable: a name and .numpy()."""

    def __init__(self, name, value):
        self.name, self._value = name, value

    def numpy(self):
        return self._value


class FakeModel:
    """What resnetc.from_keras reads of a Keras model: to_json(), .name, .layers[i].name and .weights.

    Layers are instances of classes named as the Keras classes (from_keras recognizes BatchNormalization
    by its class name); `weight_names` maps a weight to the name its variable carries (Keras 3: `kernel`).
    """

    def __init__(self, config_text, tensors, weight_names=lambda layer, w: w):
        config = json.loads(config_text)
        self.name = config["config"]["name"]
        self._json = config_text
        self.layers = []
        for entry in config["config"]["layers"]:
            name = entry["config"]["name"]
            layer = type(entry["class_name"], (), {})()
            layer.name = name
            layer.weights = [FakeVariable(weight_names(name, key.split(".", 1)[1]), value)
                             for key, value in tensors.items() if key.split(".", 1)[0] == name]
            self.layers.append(layer)

    def to_json(self):
        return self._json
