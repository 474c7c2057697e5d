"""The article's model, its optimizer, and whether its LSTM can run on cuDNN.

The output head is the task's (``trainer.task.Task.head``): the article's
``Dense(1, sigmoid)`` for two classes, ``Dense(K, softmax)`` for more.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.config import Config
from trainer.ema import WarmAdam
from trainer.lstm import LeanLSTM
from trainer.task import Task

LSTM_LAYER_NAME = "lstm"
EMBEDDING_LAYER_NAME = "embedding"


def build(config: Config, use_cudnn: bool | str = "auto", task: Task | None = None) -> keras.Model:
    """``Embedding(vocab_size, 32) -> LSTM(100) -> task's head``: 373,301 parameters for 2 classes.

    Call inside ``strategy.scope()`` with the dtype policy already set. The
    input length is left open (None) so that length-bucketed batches of any
    width run through the same weights.

    Args:
      config: vocab_size, embedding_dim, lstm_units, uses_mask, and
        lean_lstm: ``trainer.lstm.LeanLSTM`` (Keras' LSTM with the same weights
        and function, cuDNN on a GPU, a faster recurrence on a CPU) or
        ``keras.layers.LSTM``.
      use_cudnn: Keras' LSTM setting: "auto" runs cuDNN when a GPU is present;
        False always traces the generic recurrence, which runs on any device
        (``trainer.export`` builds the serving copy so).
      task: the classes, whose head ends the model; None: IMDB's two.

    Returns:
      A Keras model whose float32 output is P(class 1) ``[batch, 1]`` for two
      classes, else the classes' probabilities ``[batch, K]``.
    """
    return keras.Sequential(
        [
            keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            keras.layers.Embedding(config.vocab_size, config.embedding_dim,
                                   mask_zero=config.uses_mask, name=EMBEDDING_LAYER_NAME),
            # Keras' defaults are the cuDNN-eligible ones (tanh, sigmoid, no recurrent
            # dropout, not unrolled, with bias); cudnn_blockers() checks they stay so.
            # LeanLSTM's fused CPU op needs the same settings (LeanLSTM.runs_lean).
            (LeanLSTM if config.lean_lstm else keras.layers.LSTM)(
                config.lstm_units, use_cudnn=use_cudnn, name=LSTM_LAYER_NAME),
            # Under mixed precision the sigmoid (softmax) and the loss must stay float32.
            (task or Task()).head(),
        ],
        name="imdb_lstm",
    )


def make_optimizer(config: Config, total_steps: int) -> keras.optimizers.Optimizer:
    """Adam at the rate ``learning_rate_schedule`` gives, keeping the weights' moving average.

    Wrapped in loss scaling under mixed_float16. Call inside ``strategy.scope()``
    after the dtype policy is set. ``trainer.steps.Steps.averaged_weights`` puts
    the average in the model.

    Args:
      config: learning_rate, lr_schedule, warmup_steps, ema_momentum,
        embedding_lr_scale, adam_beta_2.
      total_steps: the run's training steps (``loop.Plan.total_steps``), where
        a cosine schedule ends.
    """
    optimizer = WarmAdam(
        learning_rate=learning_rate_schedule(config, total_steps),
        use_ema=bool(config.ema_momentum), ema_momentum=config.ema_momentum,
        beta_2=config.adam_beta_2, lr_scales={EMBEDDING_LAYER_NAME: config.embedding_lr_scale},
        # Keras' Adam's name. Not cosmetic: named after the "lstm" layer ("warm_adam"),
        # Keras' LSTM loop ran slower on a CPU (docs/performance.md).
        name="adam")
    if keras.config.dtype_policy().name == "mixed_float16":
        # float16 gradients underflow without it; bfloat16 has float32's range.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def learning_rate_schedule(config: Config, total_steps: int
                           ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """``--learning_rate`` as a number, or under a warm-up or cosine decay Keras' schedule.

    The schedule is a function of the optimizer's step counter, which is
    checkpointed, so a resumed run continues on it; it is rebuilt from each
    command's flags, so a resumed run takes that command's rate.
    """
    if config.lr_schedule == "constant" and not config.warmup_steps:
        return config.learning_rate
    if total_steps < 1:  # A schedule over no steps would leave the rate at 0 after step 1.
        raise ValueError(f"--lr_schedule={config.lr_schedule} needs the run's step count, "
                         f"not total_steps={total_steps}.")
    warm = config.warmup_steps
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warm else config.learning_rate,
        decay_steps=max(1, total_steps - warm),
        alpha=1.0 if config.lr_schedule == "constant" else 0.0,  # 1.0: no decay at all.
        warmup_target=config.learning_rate if warm else None, warmup_steps=warm)


def cudnn_blockers(model: keras.Model, config: Config) -> list[str]:
    """Why the LSTM could NOT use the fused cuDNN kernel on a GPU; empty if it can.

    Keras picks the kernel silently (``keras/src/layers/rnn/lstm.py`` and
    ``keras/src/backend/tensorflow/rnn.py``): it needs tanh, a sigmoid
    recurrent activation, no recurrent dropout, no unrolling, a bias, and masks
    that are strictly right-padded. This reports the settings, not the device.

    Args:
      model: from ``build``.
      config: padding and uses_mask.

    Returns:
      One readable reason per blocking setting.
    """
    lstm = model.get_layer(LSTM_LAYER_NAME)
    blockers = []
    if lstm.activation is not keras.activations.tanh:
        blockers.append("LSTM activation is not tanh")
    if lstm.recurrent_activation is not keras.activations.sigmoid:
        blockers.append("LSTM recurrent_activation is not sigmoid")
    if lstm.recurrent_dropout:
        blockers.append("LSTM recurrent_dropout is not 0")
    if lstm.unroll:
        blockers.append("LSTM unroll=True")
    if not lstm.use_bias:
        blockers.append("LSTM use_bias=False")
    if config.uses_mask and config.padding != "post":
        reason = "--bucket_by_length" if config.bucket_by_length else "--mask_padding"
        blockers.append(f"{reason} masks padding, and with --padding=pre the mask is not "
                        "right-padded as cuDNN needs; use --padding=post")
    return blockers


def cpu_lstm_kernel(model: keras.Model) -> str:
    """Which recurrence the LSTM runs without a GPU: ``LeanLSTM``'s or Keras' generic one."""
    lstm = model.get_layer(LSTM_LAYER_NAME)
    if isinstance(lstm, LeanLSTM) and lstm.runs_lean(training=True):
        threads = tf.config.threading.get_intra_op_parallelism_threads()
        return (f"LeanLSTM's fused BlockLSTM ({lstm.chains_used} chain(s), "
                + (f"{threads} intra-op thread(s))" if threads
                   else "TensorFlow's default intra-op threads)"))
    return "Keras' generic loop"
