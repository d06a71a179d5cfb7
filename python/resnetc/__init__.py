"""resnetc: a declarative ResNet graph compiler, from Python.

Load a YAML spec (or bring a Keras model over with :func:`from_keras`), compile it to JIT CPU kernels, and
run it on float32 NHWC numpy arrays::

    import numpy as np, resnetc
    model = resnetc.load("specs/notebook_resnet50.yaml")           # weights="model.safetensors" for real ones
    print(model.summary())
    compiled = model.compile()                                     # threads=0: one per core
    y = compiled(np.zeros((8, 64, 64, 3), np.float32))             # (8, 6)

Errors are exceptions: :class:`SpecError` for a spec, weights file or Keras config resnetc refuses (with the
located ``FILE:LINE:COL: error:`` text and ``.diagnostics``), ``ValueError`` for arrays of the wrong dtype or
shape and bad options, ``OSError`` for files that cannot be read, :class:`InternalError` for a bug in resnetc.
"""

from ._errors import Diagnostic, InternalError, SpecError
from ._keras import from_keras
from ._resnetc import CompiledModel, Model, __version__, check, load

__all__ = [
    "CompiledModel",
    "Diagnostic",
    "InternalError",
    "Model",
    "SpecError",
    "__version__",
    "check",
    "from_keras",
    "load",
]
