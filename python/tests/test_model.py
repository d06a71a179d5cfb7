"""Load, inspect, compile and run models from Python: results against the Rust reference interpreter and
against Keras's outputs (committed fixtures), batch sizes, threads, and every way an input can be wrong."""

import threading
import time

import numpy as np
import pytest

import resnetc
from conftest import KERAS_FIXTURES, SPECS, rel_diff


@pytest.fixture(scope="module")
def tiny():
    spec, weights, x, y = KERAS_FIXTURES["tiny_resnet"]
    model = resnetc.load(spec, weights)
    return model, model.compile(threads=1), np.load(x), np.load(y)


def test_properties_of_the_notebook_model():
    m = resnetc.load(SPECS / "notebook_resnet50.yaml")
    assert m.name == "notebook_resnet50"
    assert m.input_shape == (64, 64, 3)
    assert m.output_shape == (6,)
    assert m.params == 23_600_006
    assert m.macs == 308_178_944
    assert m.projections == [] and m.warnings == []
    s = m.summary()
    assert s.startswith('Model: "notebook_resnet50"') and "Total params: 23,600,006" in s
    assert "res2a_branch2a" in s
    dot = m.to_dot()
    assert dot.startswith('digraph "notebook_resnet50"') and "style=dashed" in dot
    fused = m.to_dot(after="fuse_conv_relu")
    assert fused != dot and "res2a_branch2a" in fused
    with pytest.raises(ValueError, match='unknown pass "fuse_everything"; the passes are: shortcut_projections, '):
        m.to_dot(after="fuse_everything")
    assert repr(m) == '<resnetc.Model "notebook_resnet50": (64, 64, 3) -> (6,), 23,600,006 parameters>'


def test_projections_and_warnings(tmp_path):
    m = resnetc.load(SPECS / "resnet18.yaml")
    assert len(m.projections) == 3
    assert m.projections[0].startswith("inserted shortcut projection `")
    spec = tmp_path / "dead.yaml"
    spec.write_text("model: w\ninput: [4, 4, 2]\nlayers:\n"
                    "  - {op: conv, name: c, filters: 2, kernel: 1}\n"
                    "  - {op: relu, name: dead, inputs: input}\n"
                    "  - {op: global_avg_pool, name: g, inputs: c}\n")
    m = resnetc.load(spec)
    assert [(w.file, w.line, w.severity) for w in m.warnings] == [(str(spec), 5, "warning")]
    assert "`dead`" in m.warnings[0].message
    assert resnetc.check(spec) == m.warnings


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_apps", "ops_edge"])
def test_fixtures_match_keras(name):
    spec, weights, x, y = KERAS_FIXTURES[name]
    m = resnetc.load(spec, weights)
    x, y = np.load(x), np.load(y)
    assert rel_diff(m.run_reference(x), y) <= 1e-5
    c = m.compile()
    got = c(x)
    assert got.dtype == np.float32 and got.shape == y.shape
    assert rel_diff(got, y) <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_jit_agrees_with_the_reference_interpreter(batch):
    m = resnetc.load(SPECS / "notebook_resnet50.yaml", seed=7)
    c = m.compile(threads=2)
    x = np.random.default_rng(batch).normal(size=(batch, 64, 64, 3)).astype(np.float32)
    y = c(x)
    assert y.shape == (batch, 6)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)  # softmax
    assert rel_diff(y, m.run_reference(x)) <= 1e-5
    # Items are independent: a batch gives what its items give one at a time.
    for i in range(batch):
        assert np.array_equal(c(x[i:i + 1])[0], y[i])


def test_seed_and_input_shape():
    a = resnetc.load(SPECS / "notebook_resnet50.yaml", seed=1).compile()
    b = resnetc.load(SPECS / "notebook_resnet50.yaml", seed=2).compile()
    x = np.ones((1, 64, 64, 3), np.float32)
    assert not np.array_equal(a(x), b(x))
    m = resnetc.load(SPECS / "notebook_resnet50.yaml", input_shape=(96, 80, 3))
    assert m.input_shape == (96, 80, 3)
    assert m.compile()(np.zeros((2, 96, 80, 3), np.float32)).shape == (2, 6)


def test_compiled_model_attributes(tiny):
    _, c, _, _ = tiny
    assert c.input_shape == (36, 28, 3) and c.output_shape == (3,)
    assert c.threads == 1 and c.isa in ("avx512", "avx2", "f32x4") and c.kernels >= 10
    assert repr(c).startswith('<resnetc.CompiledModel "tiny_resnet": (36, 28, 3) -> (3,), ')


def test_threads_share_one_compiled_model(tiny):
    """4 Python threads x 50 calls on one compiled model: every output bit-identical to one thread's."""
    _, c, x, _ = tiny
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1 + i % 2, 36, 28, 3)).astype(np.float32) for i in range(4)]
    want = [c(a) for a in inputs]
    bad = []

    def work(t):
        for k in range(50):
            i = (t + k) % 4
            if not np.array_equal(c(inputs[i]), want[i]):
                bad.append((t, k))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_the_gil_is_released_while_running():
    """While one thread runs the model, another runs Python code: holding the GIL, the call would stop it for
    the whole call. (The longest stretch without Python progress, not a rate, so host load does not matter.)"""
    c = resnetc.load(SPECS / "notebook_resnet50.yaml").compile(threads=1)
    x = np.zeros((16, 64, 64, 3), np.float32)
    c(x[:1])
    span = []

    def work():
        t0 = time.perf_counter()
        c(x)
        span.append((t0, time.perf_counter()))

    worker = threading.Thread(target=work)
    stamps = []
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    ((t0, t1),) = span
    inside = [t for t in stamps if t0 < t < t1]
    longest = float(np.max(np.diff([t0] + inside + [t1])))
    assert longest < 0.5 * (t1 - t0), (longest, t1 - t0, len(inside))


def test_inputs_are_converted_or_refused(tiny):
    _, c, x, _ = tiny
    want = c(x)
    # Float32 in another memory layout is converted (copied), never misread.
    assert np.array_equal(c(np.asfortranarray(x)), want)
    assert np.array_equal(c(x.astype(">f4")), want)
    wide = np.zeros((2, 36, 56, 3), np.float32)
    wide[:, :, ::2] = x
    assert np.array_equal(c(wide[:, :, ::2]), want)  # strided view
    assert np.array_equal(c(x[::-1])[::-1], want)  # negative strides
    raw = np.zeros(x.size * 4 + 1, np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(x.shape)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    assert np.array_equal(c(unaligned), want)
    # An empty batch gives an empty result.
    assert c(x[:0]).shape == (0, 3)
    # Other dtypes are refused: converting them could lose what they hold.
    for dtype in [np.float64, np.float16, np.int32, np.uint8]:
        with pytest.raises(ValueError, match=r"expected a float32 numpy array of shape \(N, 36, 28, 3\) "
                                             r"\(NHWC, any batch size N\), found dtype "):
            c(x.astype(dtype))
    with pytest.raises(ValueError, match="found dtype float64: convert it with x.astype"):
        c(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"found shape \(2, 28, 36, 3\)$"):
        c(np.zeros((2, 28, 36, 3), np.float32))
    with pytest.raises(ValueError, match=r"found shape \(36, 28, 3\); for one image add the batch axis"):
        c(x[0])
    with pytest.raises(ValueError, match=r"found shape \(2, 36, 28, 3, 1\)"):
        c(x[..., None])
    with pytest.raises(TypeError, match="found a list object"):
        c(x.tolist())
    # The reference interpreter checks the same way.
    m = tiny[0]
    with pytest.raises(ValueError, match="found dtype float64"):
        m.run_reference(x.astype(np.float64))


def test_bad_compile_options(tiny):
    m = tiny[0]
    with pytest.raises(ValueError, match=r"threads must be 0 \(one per core; this machine has \d+\) or a count "
                                         r"up to 1024, found -1"):
        m.compile(threads=-1)
    with pytest.raises(ValueError, match="found 100000"):
        m.compile(threads=100_000)
    with pytest.raises(ValueError, match='isa="sse": unknown ISA tier `sse`: expected one of avx512, avx2, f32x4, auto'):
        m.compile(isa="sse")
    with pytest.raises(ValueError, match="batch must be a batch group of 1 to 64 items, found 0"):
        m.compile(batch=0)
    assert m.compile(threads=1, isa="f32x4").isa == "f32x4"
    for isa in ("avx512", "avx2"):
        try:
            assert m.compile(threads=1, isa=isa).isa == isa
        except ValueError as e:  # a tier this CPU lacks: the message says what it needs
            assert f'isa="{isa}": ISA tier `{isa}` is not available here: it needs' in str(e)
