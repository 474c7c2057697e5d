"""A leaner LSTM for CPUs: Keras' LSTM with the same weights and the same function.

On a CPU, Keras runs a generic ``tf.while_loop`` whose every timestep
multiplies that step's input by the kernel, multiplies the state by the
recurrent kernel, and runs about 40 small ops; the gradient then replays the
loop through TensorFlow's while-loop machinery, with two more small matmuls
per step for the weight gradients. At batch 64 and 100 units each op is tiny,
so per-op overhead, not arithmetic, sets the speed.

``LeanLSTM`` keeps Keras' layer (weights, names, saving, the cuDNN path on a
GPU) and replaces only the CPU recurrence:

- the input projection ``x @ kernel + bias`` of all timesteps is one matmul,
  before the loop (the bias rides in it as the weight of a constant input, so
  its gradient needs no separate reduction);
- each forward step does ``h @ recurrent_kernel``, the gate sigmoids and
  tanh, the cell update, and (in training only) keeps what the backward pass
  needs;
- the gradient is written by hand (``tf.custom_gradient``): a backward loop
  with one fused elementwise op (TensorFlow's ``LSTMBlockCellGrad``) and one
  small matmul per step, then the recurrent kernel's gradient as one matmul
  over all timesteps (the input kernel's and the bias's follow from the
  projection's matmul, also over all timesteps);
- the batch's rows are split into ``chains`` independent recurrences (one
  per core, at most ``MAX_CHAINS``) that TensorFlow runs at the same time:
  one recurrence is a strictly serial chain of small ops that keeps one core
  busy;
- a right-padded mask (the harness's ``--padding=post``, checked on every
  batch) is not applied step by step: a row's output is read from the saved
  states at its length, and its gradient is added into the backward loop
  there (one add per step, where a mask costs six ops). Any other mask is
  applied at every step.

Whether that is faster here is measured, not assumed: ``python -m
benchmarks.lstm_kernel`` and ``python -m benchmarks.throughput`` race it
against Keras' LSTM (see ``benchmarks/README.md``).

Masked timesteps carry the state unchanged and the layer returns the output
of the last unmasked step, as Keras does.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import keras
import tensorflow as tf

# What the fused gradient op (LSTMBlockCellGrad) reads of each forward step, besides cs.
SAVED_FOR_GRADIENT = ("i", "f", "o", "ci", "co")

# Default cap on LeanLSTM's chains: measured on 2 cores only (benchmarks/README.md).
MAX_CHAINS = 2


@keras.saving.register_keras_serializable(package="trainer")
class LeanLSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` with a faster recurrence when no GPU is present.

    Same constructor, weights (``kernel``, ``recurrent_kernel``, ``bias``, gate
    order i, f, c, o) and outputs. It falls back to Keras' own code (cuDNN on a
    GPU) whenever the lean loop does not apply: see ``runs_lean``.

    Args:
      units: as for ``keras.layers.LSTM``.
      chains: independent recurrences the batch's rows are split into, so that
        several CPU cores each run one; None means one per core, at most
        ``MAX_CHAINS``. It changes speed only, never a result.
      **kwargs: as for ``keras.layers.LSTM``.
    """

    def __init__(self, units: int, chains: int | None = None, **kwargs: object) -> None:
        super().__init__(units, **kwargs)
        self.chains = chains

    def get_config(self) -> dict:
        return {**super().get_config(), "chains": self.chains}

    @property
    def chains_used(self) -> int:
        """The number of recurrences ``call`` runs side by side on a CPU."""
        if self.chains:
            return self.chains
        return max(1, min(MAX_CHAINS, len(os.sched_getaffinity(0))))

    def runs_lean(self, training: bool = False) -> bool:
        """Whether ``call`` uses the lean CPU loop rather than Keras' own.

        Args:
          training: dropout on the inputs only applies in training.

        Returns:
          True on the TensorFlow backend with no GPU, for the settings the lean
          loop implements: Keras' default activations, a bias, no recurrent
          dropout, no input dropout while training, one output per sequence,
          and float32 or float16 (LSTMBlockCellGrad has no bfloat16 kernel).
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
        # Keras reads the final states only to return them or to carry them (stateful).
        cell_state = self.return_state or self.stateful
        h, c = lstm_last_state(
            sequences, initial_state[0], initial_state[1], mask,
            kernel=keras.ops.cast(self.cell.kernel, dtype),
            recurrent_kernel=keras.ops.cast(self.cell.recurrent_kernel, dtype),
            bias=keras.ops.cast(self.cell.bias, dtype), training=training,
            chains=self.chains_used, cell_state=cell_state)
        return h, h[:, None, :], [h, c if cell_state else tf.zeros_like(h)]


def lstm_last_state(inputs: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, mask: tf.Tensor | None,
                    kernel: tf.Tensor, recurrent_kernel: tf.Tensor, bias: tf.Tensor,
                    training: bool = True, chains: int = 1,
                    cell_state: bool = True) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Runs an LSTM (Keras' gate order i, f, c, o) over ``inputs``; returns the last state.

    Args:
      inputs: ``[batch, time, features]``.
      h0: ``[batch, units]`` initial output.
      c0: ``[batch, units]`` initial cell state.
      mask: ``[batch, time]`` bool, False where the step is padding; or None.
      kernel: ``[features, 4 * units]``.
      recurrent_kernel: ``[units, 4 * units]``.
      bias: ``[4 * units]``.
      training: run the hand-written gradient, which keeps every step's gates;
        False runs the forward loop alone (TensorFlow can still differentiate it,
        slowly), which is also what a SavedModel can serialize.
      chains: independent recurrences over contiguous parts of the batch, which
        TensorFlow runs at the same time (the rows of a batch never interact).
      cell_state: return ``c`` too. Without it no gradient for ``c`` is sent
        back through the loop (a zero one costs two ops per backward step).

    Returns:
      ``(h, c)`` after the last step (after the last unmasked step of each
      row); ``c`` is None without ``cell_state``.
    """
    # TensorFlow's fused LSTMBlockCellGrad wants the gates in the order i, c, f, o.
    kernel, recurrent_kernel, bias = (_keras_to_icfo(w) for w in (kernel, recurrent_kernel, bias))
    # The bias joins the kernel as the weights of one more input that is always 1, so
    # that the input projection and its gradients (the bias's too) are one matmul each.
    kernel = tf.concat([kernel, bias[None, :]], axis=0)
    batch = tf.shape(inputs)[0]
    lengths = None

    def run(to_lengths: bool) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """``h``, or ``(h, c)`` with ``cell_state``: no None, which tf.cond cannot return."""
        hs, cs = [], []
        for chain in _split_rows(chains, batch, inputs=inputs, h0=h0, c0=c0, mask=mask,
                                 lengths=lengths):
            projected = _project(chain["inputs"], kernel)
            state = (chain["h0"], chain["c0"])
            keep = None  # Else [time, rows, 1]: False on padding steps, which carry the state.
            if chain["mask"] is not None and not to_lengths:
                keep = tf.transpose(chain["mask"])[:, :, None]
            if training:
                run_chain = _recurrence(keep, chain["lengths"] if to_lengths else None,
                                        cell_state)
                result = run_chain(projected, recurrent_kernel, *state)
                h, c = result if cell_state else (result, None)
            else:
                h, c, _ = _forward(projected, recurrent_kernel, *state, keep, save=False)
            hs.append(h)
            cs.append(c)

        def join(parts: list[tf.Tensor]) -> tf.Tensor:
            return tf.concat(parts, 0) if len(parts) > 1 else parts[0]

        return (join(hs), join(cs)) if cell_state else join(hs)

    if mask is None or not training:
        result = run(to_lengths=False)
    else:
        # A right-padded mask (--padding=post) needs no check inside the loop: a step never
        # changes the states before it, so a row's last state is the state after its last
        # token, read from every step's saved states.
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        right_padded = tf.reduce_all(
            tf.equal(mask, tf.sequence_mask(lengths, tf.shape(mask)[1])))
        result = tf.cond(right_padded, lambda: run(to_lengths=True),
                         lambda: run(to_lengths=False))
    return result if cell_state else (result, None)


def _project(inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """One matmul for every timestep's input projection: ``[time, rows, 4 * units]``.

    ``inputs`` is ``[rows, time, features]``; ``kernel`` has the bias as its last row.
    """
    time_major = tf.transpose(inputs, [1, 0, 2])
    steps, rows, features = tf.unstack(tf.shape(time_major))
    flat = tf.reshape(time_major, [steps * rows, features])  # Not -1: rows may be 0.
    flat = tf.concat([flat, tf.ones([steps * rows, 1], flat.dtype)], axis=1)
    return tf.reshape(tf.matmul(flat, kernel), [steps, rows, kernel.shape[-1]])


def _split_rows(chains: int, batch: tf.Tensor,
                **tensors: tf.Tensor | None) -> list[dict[str, tf.Tensor | None]]:
    """Splits each tensor's rows (axis 0) into ``chains`` near-equal, contiguous parts.

    None stays None. With one chain, returns the tensors as they are.
    """
    if chains == 1:
        return [tensors]
    base, extra = batch // chains, batch % chains
    sizes = base + tf.cast(tf.range(chains) < extra, batch.dtype)
    parts = {name: [None] * chains if tensor is None else tf.split(tensor, sizes, num=chains)
             for name, tensor in tensors.items()}
    return [{name: parts[name][index] for name in tensors} for index in range(chains)]


def _keras_to_icfo(weights: tf.Tensor) -> tf.Tensor:
    """Reorders the last axis from Keras' gates (i, f, c, o) to (i, c, f, o)."""
    i, f, c, o = tf.split(weights, 4, axis=-1)
    return tf.concat([i, c, f, o], axis=-1)


def _forward(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor,
             keep: tf.Tensor | None,
             save: bool) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.TensorArray]]:
    """The forward loop; with ``save``, every step's ``SAVED_FOR_GRADIENT`` and ``h``.

    Returns:
      ``(h, c, saved)``; ``saved`` is empty without ``save``. ``saved["h"]``
      and ``saved["cs"]`` hold ``h0`` and ``c0``, then the state after every step.
    """
    steps = tf.shape(projected)[0]

    def step(t: tf.Tensor, h: tf.Tensor, c: tf.Tensor,
             saved: dict[str, tf.TensorArray]) -> tuple:
        z = projected[t] + tf.matmul(h, recurrent_kernel)
        zi, zc, zf, zo = tf.split(z, 4, axis=1)
        i, ci, f, o = tf.sigmoid(zi), tf.tanh(zc), tf.sigmoid(zf), tf.sigmoid(zo)
        cs = f * c + i * ci
        co = tf.tanh(cs)
        new_h = o * co
        if keep is not None:  # Padding steps carry the state unchanged.
            cs = tf.where(keep[t], cs, c)
            new_h = tf.where(keep[t], new_h, h)
        if saved:
            values = {"i": i, "f": f, "o": o, "ci": ci, "co": co}
            saved = {**{name: saved[name].write(t, values[name]) for name in values},
                     "h": saved["h"].write(t + 1, new_h), "cs": saved["cs"].write(t + 1, cs)}
        return t + 1, new_h, cs, saved

    saved = {}
    if save:
        def array(size: tf.Tensor) -> tf.TensorArray:
            # cs is read at two steps of the backward loop, hence clear_after_read=False.
            return tf.TensorArray(projected.dtype, size=size, element_shape=h0.shape,
                                  clear_after_read=False)

        saved = {name: array(steps) for name in SAVED_FOR_GRADIENT}
        # The states before every step, and after the last: index t holds step t's input.
        saved["h"], saved["cs"] = array(steps + 1).write(0, h0), array(steps + 1).write(0, c0)
    # Up to 32 iterations in flight: a step's reads, writes and gate math can overlap
    # the next step's matmul (about 5% faster than the default 10 in benchmarks/).
    _, h, c, saved = tf.while_loop(lambda t, *_: t < steps, step,
                                   (tf.constant(0), h0, c0, saved), parallel_iterations=32)
    return h, c, saved


def _recurrence(keep: tf.Tensor | None = None, lengths: tf.Tensor | None = None,
                cell_state: bool = True) -> Callable:
    """The recurrence over precomputed input projections (gates i, c, f, o), and its gradient.

    Args:
      keep: ``[time, rows, 1]`` bool, False on padding steps, which carry the
        state unchanged; or None. Applied at every step.
      lengths: ``[rows]``: the returned state of each row is the state after
        its first ``lengths`` steps; or None for the state after the last step.
        The same function as ``keep`` with the right-padded mask of these
        lengths, without the mask's ops inside the loops.
      cell_state: return ``(h, c)``; otherwise ``h`` alone, so that no (zero)
        gradient for ``c`` is sent back through the loop.

    ``keep`` and ``lengths`` are closed over: they get no gradient.
    """

    @tf.custom_gradient
    def run(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h0: tf.Tensor,
            c0: tf.Tensor) -> tuple:
        units = recurrent_kernel.shape[0]
        h, c, saved = _forward(projected, recurrent_kernel, h0, c0, keep, save=True)
        every_h = saved["h"].stack()  # [time + 1, rows, units]: h0, then after each step.
        if lengths is not None:
            at_length = tf.stack([lengths, tf.range(tf.shape(lengths)[0])], axis=1)
            h = tf.gather_nd(every_h, at_length)
            if cell_state:
                c = tf.gather_nd(saved["cs"].stack(), at_length)

        def grad(dh: tf.Tensor | None, dc: tf.Tensor | None = None) -> tuple:
            zero_state = tf.zeros_like(h)
            # With lengths, each row's gradient enters the backward loop at its own last
            # step: [time + 1, rows, units] per state that has one (c's usually has none).
            entering = {}
            if lengths is not None:
                entering = {name: tf.scatter_nd(at_length, d, tf.shape(every_h))
                            for name, d in (("h", dh), ("c", dc)) if d is not None}
                dh, dc = None, None
            dh = zero_state if dh is None else dh
            dc = zero_state if dc is None else dc
            recurrent_kernel_t = tf.transpose(recurrent_kernel)
            zeros = tf.zeros([4 * units], projected.dtype)
            no_inputs = projected[0, :, :0]

            def back_step(t: tf.Tensor, dh: tf.Tensor, dc: tf.Tensor,
                          dzs: tf.TensorArray) -> tuple:
                if "h" in entering:
                    dh += entering["h"][t + 1]
                if "c" in entering:
                    dc += entering["c"][t + 1]
                if keep is not None:  # A padding step passes the gradient straight through.
                    dh_in, dc_in = dh, dc
                    dh = tf.where(keep[t], dh, zero_state)
                    dc = tf.where(keep[t], dc, zero_state)
                # The fused elementwise gradient of one step: d(gate pre-activations) and
                # d(c_prev). x, h_prev and w only give it shapes; the peepholes are off.
                dc_prev, dz, *_ = tf.raw_ops.LSTMBlockCellGrad(
                    x=no_inputs, cs_prev=saved["cs"].read(t), h_prev=dh, w=recurrent_kernel,
                    wci=zeros[:units], wcf=zeros[:units], wco=zeros[:units], b=zeros,
                    cs=saved["cs"].read(t + 1),
                    **{name: saved[name].read(t) for name in SAVED_FOR_GRADIENT},
                    cs_grad=dc, h_grad=dh, use_peephole=False)
                dh_prev = tf.matmul(dz, recurrent_kernel_t)
                if keep is not None:
                    dh_prev = tf.where(keep[t], dh_prev, dh_in)
                    dc_prev = tf.where(keep[t], dc_prev, dc_in)
                return t - 1, dh_prev, dc_prev, dzs.write(t, dz)

            steps = tf.shape(projected)[0]
            _, dh0, dc0, dzs = tf.while_loop(
                lambda t, *_: t >= 0, back_step,
                (steps - 1, dh, dc, tf.TensorArray(projected.dtype, size=steps)),
                parallel_iterations=32)
            if "h" in entering:
                dh0 += entering["h"][0]
            if "c" in entering:
                dc0 += entering["c"][0]
            dprojected = dzs.stack()
            # The recurrent kernel's gradient over all timesteps at once: h_{t-1} x dz_t.
            dkernel = tf.matmul(tf.reshape(every_h[:-1], [-1, units]),
                                tf.reshape(dprojected, [-1, 4 * units]), transpose_a=True)
            return dprojected, dkernel, dh0, dc0

        return ((h, c) if cell_state else h), grad

    return run
