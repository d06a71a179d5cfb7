"""Every error a user can cause reaches Python as an exception that says what and where: missing files, bad
specs (located, with diagnostics), bad weights, bad arguments; and a Rust panic as resnetc.InternalError."""

import pickle

import numpy as np
import pytest

import resnetc
from conftest import KERAS_FIXTURES, SPECS

BAD = """\
model: bad
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, filters: 0, kernel: 3}
  - {op: dense, name: fc, unit: 3}
"""


def test_missing_files():
    with pytest.raises(FileNotFoundError) as e:
        resnetc.load("no/such/spec.yaml")
    assert e.value.filename == "no/such/spec.yaml"
    assert str(e.value) == "[Errno 2] No such file or directory: 'no/such/spec.yaml'"
    with pytest.raises(FileNotFoundError):
        resnetc.check("no/such/spec.yaml")
    with pytest.raises(resnetc.SpecError, match="no/such.safetensors: cannot open a weights file: No such file"):
        resnetc.load(SPECS / "notebook_resnet50.yaml", weights="no/such.safetensors")


def test_a_bad_spec_is_located(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD)
    with pytest.raises(resnetc.SpecError) as e:
        resnetc.load(spec)
    text = str(e.value)
    assert text.startswith(f"{spec}:4:35: error: node `c1`: `filters` must be a positive integer, found 0")
    assert f"{spec}:5:27: error: node `fc`: unknown field `unit` in a `dense` node (did you mean `units`?)" in text
    d = e.value.diagnostics
    assert [(x.file, x.line, x.column, x.severity) for x in d] == [(str(spec), 4, 35, "error"),
                                                                   (str(spec), 5, 27, "error")]
    file, line, column, message = d[0]  # a (file, line, column, message) tuple
    assert (line, column) == (4, 35) and message.startswith("node `c1`: `filters` must be")
    assert str(d[0]) == text.splitlines()[0]
    assert e.value.errors == d
    assert isinstance(e.value, ValueError)
    # check() returns the same diagnostics instead of raising.
    assert resnetc.check(spec) == d
    assert resnetc.check(SPECS / "notebook_resnet50.yaml") == []
    # Diagnostics survive pickling (e.g. across multiprocessing), severity included.
    assert pickle.loads(pickle.dumps(d[0])).severity == "error"


def test_notes_stay_with_their_diagnostic(tmp_path):
    spec = tmp_path / "blocks.yaml"
    spec.write_text("model: b\ninput: [8, 8, 3]\nblocks:\n  blk:\n    params: [k]\n    nodes:\n"
                    "      - {op: conv, filters: 4, kernel: \"{k}\"}\n"
                    "layers:\n  - {use: blk, with: {k: 9}}\n")
    (d,) = resnetc.check(spec)
    assert d.line == 7 and "kernel 9x9 is larger than" in d.message
    assert "\n  = note: in block `blk` used at" in d.message


def test_bad_weights():
    spec, _, _, _ = KERAS_FIXTURES["tiny_resnet"]
    _, other, _, _ = KERAS_FIXTURES["tiny_apps"]
    with pytest.raises(resnetc.SpecError) as e:
        resnetc.load(spec, weights=other)
    msg = str(e.value)
    assert "missing tensor `conv1.kernel`, expected shape [7, 7, 3, 5]" in msg
    d = e.value.diagnostics[0]
    assert d.file is None and d.line is None and d.message.startswith(str(other))
    with pytest.raises(resnetc.SpecError, match="not a safetensors file: its first 8 bytes declare a header of"):
        resnetc.load(spec, weights=spec)


def test_bad_arguments():
    spec = SPECS / "notebook_resnet50.yaml"
    for bad in [(64, 64), (0, 64, 3), (64, 64, -3), "64,64,3", (1 << 21, 1, 1)]:
        with pytest.raises(ValueError, match=r"input_shape must be \(H, W, C\) with sizes from 1 to 1048576"):
            resnetc.load(spec, input_shape=bad)
    with pytest.raises(OverflowError):
        resnetc.load(spec, seed=-1)
    with pytest.raises(TypeError):
        resnetc.load(spec, weights=3)
    # A shape the spec cannot take is a located spec error.
    with pytest.raises(resnetc.SpecError, match="is larger than the padded input"):
        resnetc.load(spec, input_shape=(4, 4, 3))


def test_check_refuses_what_is_not_a_file(tmp_path):
    with pytest.raises(OSError, match="this is a directory, not a YAML spec file"):
        resnetc.check(tmp_path)
    with pytest.raises(OSError, match=r"/dev/zero: this is not a regular file \(a device, fifo or socket\)"):
        resnetc.check("/dev/zero")


def test_a_rust_panic_becomes_an_exception():
    with pytest.raises(resnetc.InternalError, match="resnetc panicked: boom"):
        resnetc._resnetc._panic_for_tests("boom")
    assert issubclass(resnetc.InternalError, RuntimeError)
    # The module keeps working afterwards.
    assert resnetc.load(SPECS / "notebook_resnet50.yaml").params == 23_600_006


def test_wrong_dtypes_and_shapes_name_expected_and_found():
    spec, weights, x, _ = KERAS_FIXTURES["ops_edge"]
    c = resnetc.load(spec, weights).compile(threads=1)
    x = np.load(x)
    with pytest.raises(ValueError) as e:
        c(x.astype(np.float64))
    assert "expected a float32 numpy array of shape (N, 11, 14, 3)" in str(e.value) and "found dtype float64" in str(e.value)
    with pytest.raises(ValueError) as e:
        c(np.zeros((2, 14, 11, 3), np.float32))
    assert "of shape (N, 11, 14, 3)" in str(e.value) and "found shape (2, 14, 11, 3)" in str(e.value)
