"""The ``model`` group's settings, checked without torch: the activations an MLP may use and its limits.

:mod:`astroscale_fl.learning.models` builds the torch modules these settings describe.
"""

from __future__ import annotations

from collections.abc import Sequence

from astroscale_fl.config import require

#: the activations of :data:`astroscale_fl.learning.models.ACTIVATIONS`, by name
ACTIVATION_NAMES = ("relu", "gelu", "silu", "tanh")
#: a hidden layer wider than this is a typo, not a model (its weights alone would be gigabytes)
MAX_LAYER_WIDTH = 65536
MAX_HIDDEN_LAYERS = 64


def check_mlp(widths: Sequence, activation: str, dropout: float) -> None:
    """``model.widths``, ``model.activation`` and ``model.dropout`` of an MLP: the one place these
    rules live (the config, :class:`~astroscale_fl.learning.models.MLP` and a model card's model)."""
    require(isinstance(widths, Sequence) and not isinstance(widths, str), "model.widths", "a list of layer widths", widths)
    require(activation in ACTIVATION_NAMES, "model.activation", f"one of {sorted(ACTIVATION_NAMES)}", activation)
    require(0.0 <= dropout < 1.0, "model.dropout", "a number in [0, 1)", dropout)
    require(len(widths) <= MAX_HIDDEN_LAYERS, "model.widths", f"at most {MAX_HIDDEN_LAYERS} hidden layers", len(widths))
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_LAYER_WIDTH]
    require(not bad, "model.widths", f"layer widths in 1..{MAX_LAYER_WIDTH}", widths)
