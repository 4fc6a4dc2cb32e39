"""Optimizers by name, with optional per-variable learning-rate factors.

Keras 3 has no per-layer learning rates, and scaling gradients would not do (Adam's steps
ignore a gradient's scale), so discriminative rates scale the learning rate each
variable's update step receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras


class _ScaledRates:
    """Mixin: `rate_factors` maps id(variable) -> factor on the learning rate (default 1)."""

    rate_factors: Mapping[int, float]

    def build(self, variables: list[Any]) -> None:
        super().build(variables)  # type: ignore[misc]
        factors = getattr(self, "rate_factors", {})
        self._factor_by_index = [float(factors.get(id(v), 1.0)) for v in variables]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        factor = self._factor_by_index[self._get_variable_index(variable)]  # type: ignore
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return super().update_step(gradient, variable, learning_rate)  # type: ignore[misc]


def _scaled(base: type) -> type:
    cls = type(f"Scaled{base.__name__}", (_ScaledRates, base), {})
    # Registered so a saved model's compile config names a class Keras can find again.
    return keras.saving.register_keras_serializable(package="tl_engine")(cls)


_BASES = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
_SCALED = {name: _scaled(base) for name, base in _BASES.items()}


def make_optimizer(name: str, learning_rate: float,
                   rate_factors: Mapping[int, float] | None = None) -> Any:
    """`name`'s optimizer; with `rate_factors` (id(variable) -> factor), some variables
    learn at a multiple of `learning_rate`."""
    kwargs: dict[str, Any] = {"momentum": 0.9, "nesterov": True} if name == "sgd" else {}
    if not rate_factors:
        return _BASES[name](learning_rate, **kwargs)
    optimizer = _SCALED[name](learning_rate, **kwargs)
    optimizer.rate_factors = dict(rate_factors)
    return optimizer


def variable_factors(backbone: Any, layer_factors: dict[str, float]) -> dict[int, float]:
    """Layer name -> factor, as the optimizer wants it: id(variable) -> factor."""
    return {id(variable): factor for layer in backbone.layers
            if (factor := layer_factors.get(layer.name)) is not None
            for variable in layer.trainable_weights}
