"""Train the classic IMDB sentiment LSTM as a distributed TensorFlow job.

Run ``python -m trainer.main --helpfull`` for every flag, or read README.md.
"""
