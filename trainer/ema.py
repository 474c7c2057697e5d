"""Adam whose moving average of the weights warms up, and whose rate may differ per layer.

Keras' optimizer EMA (``use_ema=True``) starts the average at the weights after
the first step and then applies ``ema_momentum`` from the second step on. After
N steps about ``ema_momentum ** N`` of the average is still the nearly untrained
early weights: at momentum 0.99 that is 37% after 100 steps and 13% after 200,
which is most of a small run.

``WarmAdam`` keeps that first step and then uses the momentum
``min(ema_momentum, (1 + t) / (10 + t))`` at step t (t = 0 for the first step),
as ``tf.train.ExponentialMovingAverage`` does with ``num_updates``: early on
the average follows the weights closely, and after about ``10 m / (1 - m)``
steps (990 at 0.99) it is Keras' average. The step is ``optimizer.iterations``,
which is checkpointed already, so the optimizer's variables, and therefore
its checkpoints, are exactly Adam's: a checkpoint written with Adam restores
into ``WarmAdam`` and back.

``lr_scales`` multiplies the learning rate of a named layer's weights (the
embedding's, with ``--embedding_lr_scale``). Keras' optimizers have one rate
for every variable; scaling the gradient instead would not work, since Adam's
step does not depend on the gradient's scale.
"""

from __future__ import annotations

import keras
from keras import ops


def warmup_momentum(step: object, momentum: float) -> object:
    """The average's momentum at ``step`` (0 = the first step): 0, then the warm-up.

    Args:
      step: optimizer steps taken before this one (a scalar tensor or a number).
      momentum: the momentum the warm-up approaches, ``ema_momentum``.

    Returns:
      0 at step 0 (the average becomes the weights after the first step, as in
      Keras), else ``min(momentum, (1 + step) / (10 + step))``, float32.
    """
    step = ops.cast(step, "float32")
    warm = ops.minimum(ops.cast(momentum, "float32"), (1.0 + step) / (10.0 + step))
    return ops.where(ops.equal(step, 0.0), ops.zeros_like(warm), warm)


@keras.saving.register_keras_serializable(package="trainer")
class WarmAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose weights' moving average has a warm-up, rates per layer.

    Same variables, checkpoints and config as Adam, plus ``lr_scales``; the
    momentum of the average (``use_ema=True``) differs: see ``warmup_momentum``.
    Works under ``tf.distribute`` and inside ``keras.optimizers.LossScaleOptimizer``
    (the inner optimizer updates the average, counting the steps it applied).

    Args:
      lr_scales: ``{layer name: multiple of the learning rate}`` for the weights
        of those layers (a variable whose path has that layer's name); None or
        empty: one rate for all.
      **kwargs: ``keras.optimizers.Adam``'s.
    """

    def __init__(self, lr_scales: dict[str, float] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.lr_scales = dict(lr_scales or {})
        self._variable_lr_scales: list[float] = []  # By variable index; set in build().

    def build(self, variables: list) -> None:
        """Adam's build, and each variable's multiple of the rate, by its index."""
        super().build(variables)
        self._variable_lr_scales = [self._lr_scale(variable.path) for variable in variables]

    def _lr_scale(self, path: str) -> float:
        scales = [scale for name, scale in self.lr_scales.items()
                  if name in path.split("/")[:-1]]
        return float(scales[0]) if scales else 1.0

    def update_step(self, gradient: object, variable: object, learning_rate: object) -> None:
        """Adam's step, at the variable's multiple of the rate (a constant, traced once)."""
        scale = self._variable_lr_scales[self._get_variable_index(variable)]  # apply() built it.
        if scale != 1.0:
            learning_rate = ops.multiply(learning_rate, scale)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "lr_scales": self.lr_scales}

    def _update_model_variables_moving_average(self, trainable_variables: list) -> None:
        """Keras' update (``base_optimizer.py``), with the warm-up momentum."""
        if not self.use_ema:
            return
        step_momentum = warmup_momentum(self.iterations, self.ema_momentum)  # One per step.
        for var, average in zip(trainable_variables, self._model_variables_moving_average,
                                strict=False):
            if average is None:
                continue
            momentum = ops.cast(step_momentum, var.dtype)
            average.assign(ops.add(ops.multiply(momentum, average),
                                   ops.multiply(ops.subtract(1, momentum), var)))
