"""Type stubs of resnetc's native module (python/src/lib.rs); import it as ``resnetc``."""

import os
from typing import List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._errors import Diagnostic

__version__: str

PathLike = Union[str, "os.PathLike[str]"]
Isa = Literal["auto", "avx512", "avx2", "f32x4"]

class Model:
    """A loaded, validated model: its graph with every shape inferred, and its weights."""

    @property
    def name(self) -> str:
        """The model's name (the spec's ``model``)."""
    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """The per-image input shape (H, W, C)."""
    @property
    def output_shape(self) -> Tuple[int, ...]:
        """The per-image output shape, e.g. ``(6,)``."""
    @property
    def params(self) -> int:
        """Parameters, as Keras's ``count_params()`` counts them."""
    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
    @property
    def projections(self) -> List[str]:
        """The shortcut projections resnetc inserted, one line each (as ``resnetc check`` prints them)."""
    @property
    def warnings(self) -> List[Diagnostic]:
        """Warnings found while loading: nodes that do not reach the output, unused weight tensors."""
    def summary(self) -> str:
        """A table like Keras's ``model.summary()``: layer, op, output shape, parameters, MACs, inputs."""
    def to_dot(self, after: Optional[str] = None) -> str:
        """Graphviz DOT of the graph (shortcut edges dashed), or of the graph after the optimizer pass ``after``
        (e.g. ``"fuse_conv_relu"``; ``ValueError`` lists the passes for an unknown name)."""
    def run_reference(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Runs the reference interpreter (plain ndarray code, the graph as written, no optimization) on a
        float32 NHWC batch ``(N, H, W, C)``; returns ``(N, *output_shape)``. Slow: for checking."""
    def compile(self, threads: int = 0, isa: Isa = "auto", batch: int = 1) -> CompiledModel:
        """Optimizes, plans and JIT-compiles the model.

        ``threads``: threads each kernel is split over (0: one per core). ``isa``: the CPU tier of the
        kernels: ``"auto"`` (the widest this CPU runs), ``"avx512"``, ``"avx2"`` or ``"f32x4"`` (cranelift's
        portable kernels); a tier the CPU lacks raises ``ValueError``. ``batch``: the batch group (1 to 64):
        convolutions compute that many items per call, so that a batch streams each weight once per group;
        batches run in whole groups (a smaller one runs padded). The GIL is released while compiling."""

class CompiledModel:
    """A JIT-compiled model. Call it on a float32 NHWC numpy array of any batch size; the GIL is released
    while it runs, so Python threads can call one compiled model at the same time."""

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Runs the model on ``x`` of shape ``(N, H, W, C)``, returns a new float32 array ``(N, *output_shape)``.

        A float32 array that is not C-contiguous, aligned or native-endian is copied first; any other dtype
        (e.g. float64) raises ``ValueError`` (convert it with ``x.astype(np.float32)``), and so does a wrong
        shape; an object that is not a numpy array raises ``TypeError``. Do not write to ``x`` from another
        thread while the call runs."""
    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """The per-image input shape (H, W, C)."""
    @property
    def output_shape(self) -> Tuple[int, ...]:
        """The per-image output shape."""
    @property
    def threads(self) -> int:
        """Threads each kernel is split over."""
    @property
    def isa(self) -> str:
        """The CPU tier the kernels were compiled for."""
    @property
    def kernels(self) -> int:
        """Kernels the model runs as, after fusion."""

def load(spec: PathLike, weights: Optional[PathLike] = None, input_shape: Optional[Sequence[int]] = None,
         seed: int = 0) -> Model:
    """Loads and validates a YAML spec.

    ``weights``: a safetensors file keyed ``<layer>.<weight>`` in Keras layouts; without one the model is
    initialized as the Keras notebook does (glorot-uniform kernels seeded by ``seed``, zero biases, identity
    BatchNorm). ``input_shape``: (H, W, C) in place of the spec's.

    Raises :class:`resnetc.SpecError` (every problem, located), ``FileNotFoundError`` and other ``OSError``s,
    ``ValueError`` for a bad ``input_shape``. The GIL is released while loading."""

def check(spec: PathLike, input_shape: Optional[Sequence[int]] = None) -> List[Diagnostic]:
    """Checks a spec without loading weights: returns every error and warning (an empty list: all fine)."""

def keras_to_spec(config: str, name: str, input_shape: Optional[Sequence[int]] = None) -> Tuple[str, List[str]]:
    """A Keras model config (``model.to_json()``) to spec text, and notes (layers left out); used by
    :func:`resnetc.from_keras`. ``name`` names the config in messages. Raises :class:`resnetc.SpecError`."""

def save_weights(path: PathLike, tensors: "dict[str, npt.NDArray[np.float32]]") -> None:
    """Writes float32 arrays as a safetensors file, keys as given; used by :func:`resnetc.from_keras`."""

def _panic_for_tests(message: str) -> None: ...
