"""resnetc.from_keras on live Keras models: built in Keras, exported, compiled by resnetc, compared with Keras's
predict. Needs Keras 3 and a backend (jax by default); skipped where Keras is not installed (as in CI). Run
(the README's "From Python" says how to get Keras next to resnetc):

    pytest -s -m keras python/tests
"""

import os
import sys
import time

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

import resnetc  # noqa: E402
from conftest import FIXTURES, rel_diff  # noqa: E402

sys.path.insert(0, str(FIXTURES))
import make_fixtures as mf  # noqa: E402  (the fixture models' builders, the notebook's blocks, randomize)

pytestmark = pytest.mark.keras


def round_trip(model, tmp_path, batch=2, seed=0, randomize=True, **kw):
    """Exports with from_keras, compiles, and returns (resnetc model, relative difference to predict)."""
    rng = np.random.default_rng(seed)
    if randomize:
        mf.randomize(model, rng)
    x = rng.normal(0, 1, (batch,) + tuple(model.inputs[0].shape[1:])).astype(np.float32)
    want = np.asarray(model.predict(x, verbose=0))
    m = resnetc.from_keras(model, tmp_path / "m.yaml", tmp_path / "m.safetensors", **kw)
    got = m.compile()(x)
    return m, rel_diff(got, want)


@pytest.mark.parametrize("build", [mf.tiny_resnet, mf.tiny_apps, mf.ops_edge, mf.tiny_seq])
def test_small_models(build, tmp_path):
    keras.backend.clear_session()
    model = build()
    m, d = round_trip(model, tmp_path)
    assert d <= 1e-5, d
    assert m.params == model.count_params()


def test_batch_norm_without_center_and_scale(tmp_path):
    from keras import layers
    model = keras.Sequential([keras.Input((9, 9, 2)), layers.Conv2D(3, 3, name="c"),
                              layers.BatchNormalization(center=False, scale=False, name="bn"),
                              layers.GlobalMaxPooling2D(name="g"), layers.Dense(4, name="d")])
    bn = model.get_layer("bn")
    assert [w.name for w in bn.weights] == ["moving_mean", "moving_variance"]
    bn.set_weights([np.array([0.3, -0.2, 0.1], np.float32), np.array([0.5, 2.0, 1.5], np.float32)])
    _, d = round_trip(model, tmp_path, randomize=False)
    assert d <= 1e-5, d


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_models_loaded_from_files(suffix, tmp_path):
    keras.backend.clear_session()
    model = mf.tiny_resnet()
    mf.randomize(model, np.random.default_rng(3))
    path = tmp_path / f"saved{suffix}"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(4).normal(size=(2, 36, 28, 3)).astype(np.float32)
    m = resnetc.from_keras(loaded, tmp_path / "m.yaml", tmp_path / "m.safetensors")
    assert rel_diff(m.compile()(x), np.asarray(loaded.predict(x, verbose=0))) <= 1e-5


def notebook_resnet50(input_shape=(64, 64, 3), classes=6):
    """The Keras "Residual Networks" notebook's ResNet50 (its layer names and blocks)."""
    from keras import layers
    xi = layers.Input(input_shape)
    x = layers.ZeroPadding2D((3, 3))(xi)
    x = layers.Conv2D(64, (7, 7), strides=(2, 2), name="conv1")(x)
    x = layers.BatchNormalization(axis=3, name="bn_conv1")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    for stage, filters, blocks, s in [(2, [64, 64, 256], "bc", 1), (3, [128, 128, 512], "bcd", 2),
                                      (4, [256, 256, 1024], "bcdef", 2), (5, [512, 512, 2048], "bc", 2)]:
        x = mf.convolutional_block(x, 3, filters, stage, "a", s=s)
        for b in blocks:
            x = mf.identity_block(x, 3, filters, stage, b)
    x = layers.AveragePooling2D((2, 2), name="avg_pool")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(classes, activation="softmax", name=f"fc{classes}")(x)
    return keras.Model(inputs=xi, outputs=x, name="ResNet50")


@pytest.mark.parametrize("name", ["notebook", "keras.applications"])
def test_resnet50(name, tmp_path):
    keras.backend.clear_session()
    if name == "notebook":
        model = notebook_resnet50()
    else:
        model = keras.applications.ResNet50(weights=None)
    t0 = time.perf_counter()
    m, d = round_trip(model, tmp_path, batch=2, seed=7)
    print(f"\n{name} ResNet50: {m.params:,} parameters (Keras {model.count_params():,}), "
          f"resnetc vs Keras predict: {d:.2e} relative to the largest output ({time.perf_counter() - t0:.1f} s)")
    assert d <= 1e-5, d
    assert m.params == model.count_params()
    if name == "notebook":
        assert "Total params: 23,600,006" in m.summary()
        assert resnetc.check(tmp_path / "m.yaml") == []
