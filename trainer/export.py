r"""Saving for serving: a SavedModel that scores raw review strings, on any device.

``<model_dir>/export/<version>/`` (version 1, then 2, ... if the folder is
exported again) holds one signature::

    serving_default(reviews: tf.string [batch]) -> {
        "probabilities": tf.float32 [batch, K],   # one per class, in labels.txt order
        "label": tf.string [batch],               # the predicted class's name
        "positive_probability": tf.float32 [batch],   # two classes only: P(class 1)
    }

and ``assets.extra/labels.txt``, the class names one a line (id = line number
- 1), where TF Serving expects extra files and ignores them. Lines end at
``\n`` only, so a name may hold any other character (U+2028, U+0085, ...);
a name holding ``\n`` or ``\r`` is refused, never written.

That is the layout TensorFlow Serving and Vertex AI load as it is (the
highest version is served), and the one-input signature is what TF Serving's
REST API fills from ``{"instances": ["A wonderful film.", "Dull."]}``: one
review per instance, one prediction per review.

Inside it run the adapted ``TextVectorization`` (the same ``data.standardize``
and vocabulary as training), the same truncation and padding as training
(``data`` functions, not a copy of them), then the model. The model is a copy
of the trained one with Keras' generic LSTM (``use_cudnn=False``, not
``LeanLSTM``) in float32, so the graph holds neither the GPU-only
``CudnnRNNV3`` op nor the ``BlockLSTM`` op, whichever device trained it.

Loading it needs TensorFlow only: ``tf.saved_model.load(path)``, TensorFlow
Serving, ``saved_model_cli run``, or ``python -m trainer.predict``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainer import data, model, rundir, sources
from trainer.config import Config
from trainer.errors import UserError
from trainer.task import BINARY_CLASS_NAMES, POSITIVE_KEY, PROBABILITIES_KEY, Task

EXPORT_DIR = "export"
SIGNATURE = "serving_default"
INPUT_KEY = "reviews"
LABELS_FILE = "labels.txt"  # The class names, one a line: in a run folder and in each export.
EXTRA_DIR = "assets.extra"  # TF Serving's place for files beside the model.
_SAVED_MODEL_FILE = "saved_model.pb"


def save(config: Config, net: keras.Model, vectorizer: keras.layers.TextVectorization | None,
         task: Task | None = None) -> str | None:
    """Writes the serving SavedModel to ``<model_dir>/export/<version>``; chief only.

    Args:
      config: model_dir and the model's settings (max_len, padding, sizes).
      net: the trained model.
      vectorizer: the adapted TextVectorization; None for pre-tokenized data,
        which has no text to serve (then nothing is written).
      task: the classes (their names are served); None: IMDB's two.

    Returns:
      The version folder written, e.g. ``runs/x/export/1``, or None when there
      was nothing to export.
    """
    export_root = f"{config.model_dir}/{EXPORT_DIR}"
    if vectorizer is None:
        logging.warning("no raw-text export: --data_source=%s gives token ids, not text, so "
                        "there is no vocabulary to serve reviews with; %s is skipped.",
                        sources.resolve(config), export_root)
        return None
    task = task or Task()
    path = f"{export_root}/{next_version(export_root)}"
    serving_net = serving_model(config, net, task)
    if not vectorizer.built:  # Adapted but never called; ExportArchive tracks built layers.
        vectorizer.build((None,))
    # Keras' ExportArchive, not tf.saved_model.save of a tf.Module holding the model: that
    # tracks Keras' Variable wrappers while the function captures the tf.Variables inside
    # them, and TF1-style loaders (TF Serving, saved_model_cli run) then find no such
    # variables. ExportArchive saves the variables the endpoint actually captures.
    archive = keras.export.ExportArchive()
    archive.track(vectorizer)  # Its vocabulary table is not a variable: track it by hand.
    archive.track(serving_net)
    archive.add_endpoint(SIGNATURE, _scorer(config, vectorizer, serving_net, task),
                         input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    # Written aside, then renamed into place: a crash mid-write leaves a dot-folder, which
    # neither TF Serving (integer names only) nor find() loads, never a half version.
    temporary = f"{export_root}/.{os.path.basename(path)}.tmp-{os.getpid()}"
    try:
        archive.write_out(temporary, verbose=False)
        write_labels(f"{temporary}/{EXTRA_DIR}", task.class_names)
        tf.io.gfile.rename(temporary, path)
    except BaseException:
        rundir.remove_quietly(temporary)  # A full disk gets back what the half export took.
        raise
    logging.info("exported the serving SavedModel to %s", path)
    return path


def write_labels(folder: str, class_names: Sequence[str]) -> None:
    r"""``<folder>/labels.txt``: one class name a line, id = line number - 1; written whole.

    UTF-8, each name followed by ``\n``; ``read_labels`` splits at ``\n`` only.

    Raises:
      UserError: a name holds a line break (``\n`` or ``\r``), or is blank:
        it could not be read back as one line (``task.Task`` refuses these
        first; this keeps any other caller from writing a file that reads
        back as other classes).
    """
    for name in class_names:
        if "\n" in name or "\r" in name or not name.strip():
            raise UserError(f"class name {name!r} cannot be one line of {LABELS_FILE}: class "
                            "names must be non-empty and hold no line break (\\n or \\r); "
                            "rename that class in the data.")
    tf.io.gfile.makedirs(folder)
    rundir.write_atomically(f"{folder}/{LABELS_FILE}",
                            lambda f: f.write("".join(f"{name}\n" for name in class_names)))


def serving_model(config: Config, net: keras.Model, task: Task | None = None,
                  use_cudnn: bool | str = False) -> keras.Model:
    """A float32 copy of ``net`` whose LSTM is Keras' own, with ``net``'s weights.

    ``LeanLSTM`` traces TensorFlow's ``BlockLSTM`` on a CPU, and Keras' LSTM
    traces ``CudnnRNNV3`` when a GPU is present, which then cannot run on a
    CPU-only server; ``keras.layers.LSTM(use_cudnn=False)`` computes the same
    function with ops every device has. float32 because mixed precision is a
    training-speed setting (float16 is slow on a CPU); the weights are float32
    either way. ``use_cudnn="auto"`` is for ``model.keras``, which Keras
    rebuilds on whatever device loads it, with no ``trainer`` import needed.
    """
    with _dtype_policy("float32"):
        copy = model.build(config.replace(lean_lstm=False), use_cudnn=use_cudnn, task=task)
    copy.set_weights(net.get_weights())
    return copy


def _scorer(config: Config, vectorizer: keras.layers.TextVectorization, net: keras.Model,
            task: Task) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The serving function: raw review strings ``[batch]`` -> ``task.serving_outputs``."""

    def score(reviews: tf.Tensor) -> dict[str, tf.Tensor]:
        # The steps of data.encode then data.batches, on a whole batch of strings.
        ids = data.truncate(vectorizer(reviews), config)
        if config.uses_mask:
            # The mask makes the width irrelevant, so only the batch's longest review is
            # run, as in bucketed training; at least 1 step: the LSTM cannot run 0.
            padded = data.pad(ids, config)
            padded = tf.pad(padded, [[0, 0], [0, tf.maximum(1 - tf.shape(padded)[1], 0)]])
        else:
            padded = data.pad(ids, config, width=config.max_len)  # Pads are inputs too.
        return task.serving_outputs(net(tf.cast(padded, tf.int32), training=False))

    return score


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to ``name`` for the block, then restored."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def versions(export_root: str) -> list[int]:
    """The integer-named folders in ``export_root`` (finished or not), ascending."""
    if not tf.io.gfile.isdir(export_root):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(export_root))
    return sorted(int(name) for name in names if name.isdigit())


def next_version(export_root: str) -> int:
    """1 for a new export folder, else one more than its highest version."""
    return max(versions(export_root), default=0) + 1


def find(path: str) -> str:
    """The SavedModel folder for ``path``: a run folder, its ``export/``, or a version folder.

    Takes the highest version holding a SavedModel, or, for runs exported
    before versions, the SavedModel directly in ``export/``.

    Raises:
      UserError: ``path`` does not exist or holds no exported model.
    """
    path = path.rstrip("/")
    if not path:
        raise UserError("--model_dir is required: a training run's --model_dir or its "
                        f"{EXPORT_DIR}/ folder.")
    export_root = f"{path}/{EXPORT_DIR}" if tf.io.gfile.isdir(f"{path}/{EXPORT_DIR}") else path
    for version in reversed(versions(export_root)):
        if tf.io.gfile.exists(f"{export_root}/{version}/{_SAVED_MODEL_FILE}"):
            return f"{export_root}/{version}"
    if tf.io.gfile.exists(f"{export_root}/{_SAVED_MODEL_FILE}"):
        return export_root
    if not tf.io.gfile.isdir(path):
        raise UserError(f"--model_dir={path} does not exist; give the --model_dir of a "
                        "finished training run, or its export/ folder.")
    raise UserError(f"--model_dir={path} holds no exported model ({path}/{EXPORT_DIR}/"
                    f"<version>/{_SAVED_MODEL_FILE}); train to the end with python -m "
                    f"trainer.main --model_dir={path}, or point at an export folder.")


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A loaded export: its class names and a function scoring review texts.

    Attributes:
      class_names: from the export's ``labels.txt``; exports written before
        labels have two, ``("negative", "positive")``.
      probabilities: review texts -> ``[reviews, K]`` float32 probabilities,
        in ``class_names`` order.
    """

    class_names: tuple[str, ...]
    probabilities: Callable[[Sequence[str]], np.ndarray]

    def positive_probability(self, reviews: Sequence[str]) -> np.ndarray:
        """P(class 1) of each review; two-class exports only."""
        if len(self.class_names) != 2:
            raise UserError(f"the export has {len(self.class_names)} classes, not two; ask for "
                            "every class's probabilities instead.")
        return self.probabilities(reviews)[:, 1]


def load(path: str) -> Classifier:
    """Loads the serving signature from a run folder, an export folder or a version folder.

    Args:
      path: see ``find``.

    Returns:
      Its class names and a function from review texts to class probabilities.

    Raises:
      UserError: nothing loadable there.
    """
    export_dir = find(path)
    try:
        loaded = tf.saved_model.load(export_dir)
        signature = loaded.signatures[SIGNATURE]
    except Exception as error:  # Corrupt files raise protobuf, OS and TF errors alike.
        raise UserError(f"{export_dir} is not a readable SavedModel ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200] if str(error) else ''}); export "
                        "it again by re-running training.") from None
    labels = f"{export_dir}/{EXTRA_DIR}/{LABELS_FILE}"
    class_names = read_labels(labels)
    scores = _classes_scored(signature)
    if scores is not None and scores != len(class_names):
        raise UserError(f"{labels} names {len(class_names)} classes but the model in {export_dir} "
                        f"scores {scores}; that file must list the model's class names, one a "
                        "line, in class id order: restore it from the run folder's "
                        f"{LABELS_FILE}, or train again.")

    def probabilities(reviews: Sequence[str]) -> np.ndarray:
        outputs = signature(**{INPUT_KEY: tf.constant(list(reviews), tf.string)})
        if PROBABILITIES_KEY in outputs:
            return outputs[PROBABILITIES_KEY].numpy()
        positive = outputs[POSITIVE_KEY].numpy()  # An export from before class names.
        return np.stack([1.0 - positive, positive], axis=1)

    return Classifier(class_names, probabilities)


def _classes_scored(signature: Callable[..., dict[str, tf.Tensor]]) -> int | None:
    """How many classes the serving signature scores (None if its outputs do not say)."""
    outputs = getattr(signature, "structured_outputs", None) or {}
    if PROBABILITIES_KEY in outputs:
        return outputs[PROBABILITIES_KEY].shape[-1]
    return 2 if POSITIVE_KEY in outputs else None  # An export from before class names.


def read_labels(path: str) -> tuple[str, ...]:
    r"""The class names of a ``labels.txt``; IMDB's two where there is none (older exports).

    Lines end at ``\n`` only (``str.splitlines`` would also split a name at
    U+2028, U+0085, ``\x1c``...); a ``\r`` before it (a file edited on
    Windows), a byte-order mark and blank lines are dropped.

    Raises:
      UserError: the file is not UTF-8.
    """
    if not tf.io.gfile.exists(path):
        return BINARY_CLASS_NAMES
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not valid UTF-8 (byte {error.start + 1}); it must list the "
                        "class names in UTF-8, one a line.") from None
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split("\n"))
    return tuple(line for line in lines if line.strip())
