"""Keras models in: a spec and a safetensors file from a live Keras model, using only its config and weights."""

import os
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import _resnetc

PathLike = Union[str, "os.PathLike[str]"]


def _weight_name(variable: Any) -> str:
    # Keras 3 names a layer's variables "kernel", "gamma", ...; tf.keras 2 "conv1/kernel:0".
    return str(variable.name).split("/")[-1].split(":")[0]


def _to_numpy(variable: Any) -> np.ndarray:
    value = variable.numpy() if hasattr(variable, "numpy") else variable
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32))


def keras_weights(model: Any) -> Dict[str, np.ndarray]:
    """The model's weights as float32 arrays keyed ``<layer>.<weight>`` in Keras layouts (README "Weights").

    A BatchNormalization layer built with ``center=False`` or ``scale=False`` has no ``beta`` or ``gamma``;
    they are written as the zeros and ones Keras uses in their place.
    """
    tensors: Dict[str, np.ndarray] = {}
    for layer in model.layers:
        for v in layer.weights:
            key = f"{layer.name}.{_weight_name(v)}"
            if key in tensors:
                raise ValueError(f"two weights of layer `{layer.name}` are both named `{key}`")
            tensors[key] = _to_numpy(v)
        mean = tensors.get(f"{layer.name}.moving_mean")
        if mean is not None and type(layer).__name__ == "BatchNormalization":
            tensors.setdefault(f"{layer.name}.gamma", np.ones_like(mean))
            tensors.setdefault(f"{layer.name}.beta", np.zeros_like(mean))
    return tensors


def from_keras(model: Any, spec: PathLike, weights: PathLike,
               input_shape: Optional[Tuple[int, int, int]] = None) -> "_resnetc.Model":
    """Writes a resnetc spec and its weights from a Keras model, and loads them.

    ``model`` is a Keras Functional or Sequential model (Keras 3, or loaded by Keras from a ``.keras`` or
    ``.h5`` file); only its config (``model.to_json()``) and its weights are read. The spec written to
    ``spec`` has one node per layer, named as the layer, with ``add`` nodes written with ``shortcut:``
    edges; the weights go to ``weights`` as safetensors keyed ``<layer>.<weight>``. Layers that are
    identities at inference (Dropout, ...) are left out. ``input_shape`` = (H, W, C) fixes sizes the model
    leaves open (``keras.Input((None, None, 3))``).

    Returns the loaded :class:`resnetc.Model`. Raises :class:`resnetc.SpecError` naming every layer or
    setting resnetc does not support (nothing is written then), ``ValueError`` for a model without a
    config (a subclassed model).
    """
    try:
        config = model.to_json()
    except NotImplementedError as e:
        raise ValueError(
            "from_keras needs a Functional or Sequential Keras model: a subclassed model has no config "
            f"to convert ({e})") from None
    name = f"the Keras model `{getattr(model, 'name', '?')}`"
    text, _notes = _resnetc.keras_to_spec(config, name, input_shape)
    tensors = keras_weights(model)
    with open(spec, "w", encoding="utf-8") as f:
        f.write(text)
    _resnetc.save_weights(weights, tensors)
    return _resnetc.load(spec, weights)
