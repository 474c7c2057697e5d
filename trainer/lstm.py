"""A leaner LSTM for CPUs: Keras' LSTM with the same weights and the same function.

On a CPU, Keras runs a generic ``tf.while_loop`` whose every timestep runs
about 40 small ops, and the gradient replays the loop through TensorFlow's
while-loop machinery. At batch 64 and 100 units each op is tiny, so the cost
of scheduling ops, not arithmetic, sets the speed.

``LeanLSTM`` keeps Keras' layer (weights, names, saving, the cuDNN path on a
GPU) and replaces only the CPU recurrence with TensorFlow's fused
``BlockLSTM`` op, which runs every timestep inside one kernel (and its
gradient, ``BlockLSTMGrad``, every step backwards inside another):

- the batch's rows are split into ``chains`` independent recurrences, one
  ``BlockLSTM`` op each, which TensorFlow runs at the same time: one per core
  this process may use, as long as each gets at least ``MIN_ROWS_PER_CHAIN``
  rows (``cpu_policy``);
- each op runs on one thread: with more, each small step's matmul is split
  across cores and pays a hand-off at every one of its hundreds of steps,
  which measured slower than one thread even with cores to spare
  (``docs/performance.md``, "One thread per op"). Cores the rows cannot
  fill with chains are left to the input pipeline (``cpu_policy``;
  ``--intra_op_threads`` overrides it);
- a mask is not applied step by step: a masked step carries the state
  unchanged, so each row's unmasked steps are moved to the front (one gather,
  skipped when the mask is already right-padded, as the defaults' is), and
  the row's state is read after that many steps.

Whether that is faster here is measured, not assumed: ``python -m
benchmarks.lstm_kernel`` and ``python -m benchmarks.throughput`` race it
against Keras' LSTM (see ``docs/performance.md``, "The fused LSTM on a
CPU").

Masked timesteps carry the state unchanged and the layer returns the output
of the last unmasked step, as Keras does.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

# Fewest rows a chain is given: below it, a step's matmul is too small to be worth a core.
MIN_ROWS_PER_CHAIN = 8


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. under ``taskset``)."""
    return max(1, len(os.sched_getaffinity(0)))


def cpu_policy(cores: int, rows_per_replica: int | None, replicas: int = 1,
               min_rows_per_chain: int = MIN_ROWS_PER_CHAIN) -> tuple[int, int]:
    """LeanLSTM's chains per replica and TensorFlow's intra-op threads on a CPU.

    One chain per core, as long as each chain keeps ``min_rows_per_chain``
    rows: the chains run side by side, each on one core, and one thread per
    op keeps them from waiting for each other. Threads per op are always 1:
    splitting a chain's small steps across spare cores measured slower than
    leaving those cores to the input pipeline, so a batch too small for a
    chain per core leaves some cores to it.

    Args:
      cores: CPU cores the process may use (``usable_cores``).
      rows_per_replica: the rows one replica's LSTM sees per step (the global
        batch over the replicas); None if unknown (a chain per core).
      replicas: replicas sharing the cores (``--cpu_replicas``), each running
        its own chains.
      min_rows_per_chain: fewest rows worth a chain.

    Returns:
      ``(chains, intra_op_threads)``: chains at least 1, threads always 1
      (returned here so that one policy sizes both).
    """
    chains = max(1, cores // max(1, replicas))
    if rows_per_replica is not None:
        chains = max(1, min(chains, rows_per_replica // max(1, min_rows_per_chain)))
    return chains, 1


@keras.saving.register_keras_serializable(package="trainer")
class LeanLSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` with a faster recurrence when no GPU is present.

    Same constructor, weights (``kernel``, ``recurrent_kernel``, ``bias``, gate
    order i, f, c, o) and outputs. It falls back to Keras' own code (cuDNN on a
    GPU) whenever the fused op does not apply: see ``runs_lean``.

    Args:
      units: as for ``keras.layers.LSTM``.
      chains: independent recurrences the batch's rows are split into, so that
        several CPU cores each run one; None means ``cpu_policy``'s choice for
        the cores this process may use and the batch's rows. It changes speed
        only, never a result.
      **kwargs: as for ``keras.layers.LSTM``.
    """

    def __init__(self, units: int, chains: int | None = None, **kwargs: object) -> None:
        super().__init__(units, **kwargs)
        self.chains = chains
        self._rows_seen: int | None = None  # The static batch size the last call traced.

    def get_config(self) -> dict:
        return {**super().get_config(), "chains": self.chains}

    @property
    def chains_used(self) -> int:
        """The recurrences ``call`` runs side by side on a CPU (for the last batch traced)."""
        return self.chains_for(self._rows_seen)

    def chains_for(self, rows: int | None) -> int:
        """The chains for a batch of ``rows`` (None: unknown): ``chains``, or ``cpu_policy``'s."""
        if self.chains:
            return self.chains
        return cpu_policy(usable_cores(), rows, replicas=_local_replicas())[0]

    def runs_lean(self, training: bool = False) -> bool:
        """Whether ``call`` runs the fused BlockLSTM op rather than Keras' own loop.

        Args:
          training: dropout on the inputs only applies in training.

        Returns:
          True on the TensorFlow backend with no GPU, for the settings the op
          implements: Keras' default activations, a bias, no recurrent dropout,
          no input dropout while training, one output per sequence, and
          float32 or float16.
        """
        return (keras.backend.backend() == "tensorflow"
                and not tf.config.list_logical_devices("GPU")
                and self.compute_dtype in ("float32", "float16")
                and self.activation is keras.activations.tanh
                and self.recurrent_activation is keras.activations.sigmoid
                and self.use_bias and not self.recurrent_dropout
                and not (training and self.dropout)
                and not (self.unroll or self.go_backwards or self.return_sequences))

    def inner_loop(self, sequences: tf.Tensor, initial_state: list[tf.Tensor],
                   mask: tf.Tensor | None,
                   training: bool = False) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
        """Keras' hook for the recurrence; see ``keras.layers.RNN.inner_loop``."""
        if not self.runs_lean(training):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        dtype = self.compute_dtype
        self._rows_seen = sequences.shape[0]
        h, c = lstm_last_state(
            sequences, initial_state[0], initial_state[1], mask,
            kernel=keras.ops.cast(self.cell.kernel, dtype),
            recurrent_kernel=keras.ops.cast(self.cell.recurrent_kernel, dtype),
            bias=keras.ops.cast(self.cell.bias, dtype), chains=self.chains_used)
        return h, h[:, None, :], [h, c]


def _local_replicas() -> int:
    """Replicas in this process (mirrored CPU replicas share its cores); 1 by default."""
    strategy = tf.distribute.get_strategy()
    if not tf.distribute.has_strategy():
        return 1
    return len(strategy.extended.worker_devices)


def lstm_last_state(inputs: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, mask: tf.Tensor | None,
                    kernel: tf.Tensor, recurrent_kernel: tf.Tensor, bias: tf.Tensor,
                    chains: int = 1) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs an LSTM (Keras' gate order i, f, c, o) over ``inputs``; returns the last state.

    Each chain of rows is one ``BlockLSTM`` op, whose gradient is TensorFlow's
    ``BlockLSTMGrad``.

    Args:
      inputs: ``[batch, time, features]``.
      h0: ``[batch, units]`` initial output.
      c0: ``[batch, units]`` initial cell state.
      mask: ``[batch, time]`` bool, False on padding steps, which carry the
        state unchanged (Keras' masking); or None.
      kernel: ``[features, 4 * units]``.
      recurrent_kernel: ``[units, 4 * units]``.
      bias: ``[4 * units]``.
      chains: independent recurrences over contiguous parts of the batch, which
        TensorFlow runs at the same time (the rows of a batch never interact).

    Returns:
      ``(h, c)`` after each row's last step.
    """
    # BlockLSTM takes the input and recurrent kernels as one matrix (each step computes
    # [x, h] @ weights + bias), with the gates in the order i, c, f, o. (BlockLSTMV2 takes
    # Keras' order, but TensorFlow 2.21 differentiates it with BlockLSTM's gradient op,
    # which reads the gates in BlockLSTM's order: wrong gradients.)
    weights = _keras_to_icfo(tf.concat([kernel, recurrent_kernel], axis=0))
    bias = _keras_to_icfo(bias)
    lengths = None
    if mask is not None:
        # Masked steps carry the state unchanged, so a row's last state is the state after
        # its unmasked steps alone, in order: the state after its first `lengths` steps once
        # those are moved to the front. A right-padded mask (the defaults') has them there.
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        right_padded = tf.reduce_all(tf.equal(mask, tf.sequence_mask(lengths, tf.shape(mask)[1])))
        inputs = tf.cond(right_padded, lambda: tf.identity(inputs),
                         lambda: _unmasked_steps_first(inputs, mask))
    time_major = tf.transpose(inputs, [1, 0, 2])
    hs, cs = [], []
    for chain in _split_rows(chains, tf.shape(inputs)[0], inputs=time_major, h0=h0, c0=c0,
                             lengths=lengths):
        # [time, rows, units]: the state after every step (BlockLSTM needs a step and a row:
        # its gradient is garbage for no rows; without either, the initial state stands in).
        every_h, every_c = tf.cond(
            tf.reduce_all(tf.shape(chain["inputs"])[:2] > 0),
            lambda chain=chain: _block_lstm(chain["inputs"], chain["h0"], chain["c0"],
                                            weights, bias),
            lambda chain=chain: (chain["h0"][None], chain["c0"][None]))
        if chain["lengths"] is None:
            hs.append(every_h[-1])
            cs.append(every_c[-1])
        else:  # The state after `lengths` steps; a row with none keeps its initial state.
            steps = chain["lengths"]
            last = tf.stack([tf.maximum(steps - 1, 0), tf.range(tf.shape(steps)[0])], axis=1)
            some = (steps > 0)[:, None]
            hs.append(tf.where(some, tf.gather_nd(every_h, last), chain["h0"]))
            cs.append(tf.where(some, tf.gather_nd(every_c, last), chain["c0"]))
    if chains == 1:
        return hs[0], cs[0]
    return tf.concat(hs, 0), tf.concat(cs, 0)


def _block_lstm(inputs: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, weights: tf.Tensor,
                bias: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One BlockLSTM op over time-major ``inputs``: ``h`` and ``c`` after every step.

    Returns:
      ``[time, rows, units]`` each: index t holds the state after t + 1 steps.
    """
    no_peepholes = tf.zeros_like(bias[:h0.shape[-1]])
    *_, every_c, _, _, _, _, every_h = tf.raw_ops.BlockLSTM(
        seq_len_max=tf.cast(tf.shape(inputs)[0], tf.int64), x=inputs, cs_prev=c0, h_prev=h0,
        w=weights, wci=no_peepholes, wcf=no_peepholes, wco=no_peepholes, b=bias,
        forget_bias=0.0, cell_clip=-1.0, use_peephole=False)  # Keras' LSTM: neither.
    return every_h, every_c


def _unmasked_steps_first(inputs: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``inputs`` with each row's unmasked steps moved, in order, to the front (a stable sort)."""
    to_front = tf.argsort(tf.cast(tf.logical_not(mask), tf.int32), axis=1, stable=True)
    return tf.gather(inputs, to_front, batch_dims=1)


def _split_rows(chains: int, batch: tf.Tensor,
                **tensors: tf.Tensor | None) -> list[dict[str, tf.Tensor | None]]:
    """Splits each tensor's rows into ``chains`` near-equal, contiguous parts.

    Rows are axis 1 of ``inputs`` (time-major) and axis 0 of the others. None
    stays None. With one chain, returns the tensors as they are.
    """
    if chains == 1:
        return [tensors]
    base, extra = batch // chains, batch % chains
    sizes = base + tf.cast(tf.range(chains) < extra, batch.dtype)
    parts = {name: [None] * chains if tensor is None else
             tf.split(tensor, sizes, num=chains, axis=1 if name == "inputs" else 0)
             for name, tensor in tensors.items()}
    return [{name: parts[name][index] for name in tensors} for index in range(chains)]


def _keras_to_icfo(weights: tf.Tensor) -> tf.Tensor:
    """Reorders the last axis from Keras' gates (i, f, c, o) to (i, c, f, o)."""
    i, f, c, o = tf.split(weights, 4, axis=-1)
    return tf.concat([i, c, f, o], axis=-1)
