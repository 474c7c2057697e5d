"""Saving for serving: a SavedModel that scores raw review strings.

``<model_dir>/export/`` holds one signature::

    serving_default(reviews: tf.string [batch]) -> {"positive_probability": tf.float32 [batch]}

Inside it run the adapted ``TextVectorization`` (the same ``data.standardize``
and vocabulary as training), the same truncation and padding as training
(``data`` functions, not a copy of them), then the model. Loading it needs
TensorFlow only: ``tf.saved_model.load(path).signatures["serving_default"]``,
TensorFlow Serving, or ``python -m trainer.predict``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainer import data
from trainer.config import Config
from trainer.errors import UserError

EXPORT_DIR = "export"
SIGNATURE = "serving_default"
INPUT_KEY = "reviews"
OUTPUT_KEY = "positive_probability"
_SAVED_MODEL_FILE = "saved_model.pb"


class ReviewScorer(tf.Module):
    """Raw review strings in, P(positive) out: training's preprocessing, then the model.

    Args:
      vectorizer: the TextVectorization adapted on the training reviews.
      net: the trained model (token ids -> P(positive)).
      config: max_len and padding, as in training.
    """

    def __init__(self, vectorizer: keras.layers.TextVectorization, net: keras.Model,
                 config: Config) -> None:
        super().__init__(name="review_scorer")
        self.vectorizer = vectorizer  # Tracked, so its vocabulary table is saved too.
        self.net = net
        self._config = config

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    def __call__(self, reviews: tf.Tensor) -> dict[str, tf.Tensor]:
        """Scores a batch of reviews.

        Args:
          reviews: raw review texts, e.g. ``["A wonderful film.", "Dull."]``.

        Returns:
          ``{"positive_probability": float32 [batch]}``, each value in [0, 1].
        """
        config = self._config
        # The steps of data.encode then data.batches, on a whole batch of strings. Always
        # to max_len: with --bucket_by_length the mask makes the width irrelevant, and a
        # batch of empty reviews would otherwise be 0 wide, which the LSTM cannot run.
        ids = data.truncate(self.vectorizer(reviews), config)
        padded = data.pad(ids, config, width=config.max_len)
        probabilities = self.net(tf.cast(padded, tf.int32), training=False)
        return {OUTPUT_KEY: tf.cast(probabilities[:, 0], tf.float32)}


def save(config: Config, net: keras.Model,
         vectorizer: keras.layers.TextVectorization | None) -> str | None:
    """Writes the serving SavedModel to ``<model_dir>/export``; call on the chief only.

    Args:
      config: model_dir, max_len and padding.
      net: the trained model.
      vectorizer: the adapted TextVectorization; None for pre-tokenized data,
        which has no text to serve (then nothing is written).

    Returns:
      The export folder, or None when there was nothing to export.
    """
    if vectorizer is None:
        logging.warning("no raw-text export: --data_source=%s gives token ids, not text, so "
                        "there is no vocabulary to serve reviews with; %s/%s is skipped.",
                        config.data_source_resolved, config.model_dir, EXPORT_DIR)
        return None
    path = f"{config.model_dir}/{EXPORT_DIR}"
    scorer = ReviewScorer(vectorizer, net, config)
    tf.saved_model.save(scorer, path,
                        signatures={SIGNATURE: scorer.__call__.get_concrete_function()})
    return path


def find(path: str) -> str:
    """The SavedModel folder for ``path``: a model_dir (its ``export/``) or an export itself.

    Raises:
      UserError: ``path`` does not exist or holds no exported model.
    """
    path = path.rstrip("/")
    if not path:
        raise UserError("--model_dir is required: a training run's --model_dir or its "
                        f"{EXPORT_DIR}/ folder.")
    for candidate in (f"{path}/{EXPORT_DIR}", path):
        if tf.io.gfile.exists(f"{candidate}/{_SAVED_MODEL_FILE}"):
            return candidate
    if not tf.io.gfile.isdir(path):
        raise UserError(f"--model_dir={path} does not exist; give the --model_dir of a "
                        "finished training run, or its export/ folder.")
    raise UserError(f"--model_dir={path} holds no exported model ({path}/{EXPORT_DIR}/"
                    f"{_SAVED_MODEL_FILE}); train to the end with python -m trainer.main "
                    f"--model_dir={path}, or point at an export folder.")


def load(path: str) -> Callable[[Sequence[str]], np.ndarray]:
    """Loads the serving signature from a model_dir or an export folder.

    Args:
      path: see ``find``.

    Returns:
      A function from review texts to their P(positive), float32 numbers in [0, 1].

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

    def score(reviews: Sequence[str]) -> np.ndarray:
        outputs = signature(**{INPUT_KEY: tf.constant(list(reviews), tf.string)})
        return outputs[OUTPUT_KEY].numpy()

    return score
