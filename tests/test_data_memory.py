"""trainer/data.py's memory: a review of any size costs no more than a long one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, aclimdb_files, trainer_env, write_tree

GIANT_CHARS = 20 * 1024 * 1024  # One review of 20 MB on one line.
EXTRA_PEAK_LIMIT_MB = 200

# Loads and encodes each tree in turn in one fresh process and prints the peak resident
# memory after each (VmHWM only grows): the second tree's cost is the difference.
_CHILD = """
import json, sys
from trainer import data, sources
from trainer.config import Config

def peak_mb():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

out = []
for path in sys.argv[2:]:
    config = Config(data_path=path, max_len=64, padding=sys.argv[1])
    splits = sources.load(config)
    vectorizer = data.make_vectorizer(splits.train, config)
    encoded = [data.encode(split, vectorizer, config)
               for split in (splits.train, splits.validation, splits.test)]
    out.append({"peak_mb": peak_mb(),
                "longest_review": max(len(r) for r in splits.train.reviews),
                "longest_ids": max(int(e.ids.row_lengths().numpy().max()) for e in encoded)})
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["post", "pre"])
def test_a_20_mb_review_loads_and_costs_little_more_memory_than_none(tmp_path, padding):
    normal = write_tree(tmp_path / "normal", aclimdb_files())
    files = aclimdb_files()
    files["aclImdb/train/pos/99_10.txt"] = ("a great film " * (GIANT_CHARS // 13)).encode()
    giant = write_tree(tmp_path / "giant", files)
    process = subprocess.run([sys.executable, "-c", _CHILD, padding, str(normal), str(giant)],
                             cwd=REPO, env=trainer_env(), capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    without, with_giant = json.loads(process.stdout.splitlines()[-1])
    assert with_giant["peak_mb"] - without["peak_mb"] < EXTRA_PEAK_LIMIT_MB, (without, with_giant)
    # It was read, cut on read to a bounded window, and the model still sees max_len tokens.
    assert without["longest_review"] < 1000 < with_giant["longest_review"] < GIANT_CHARS // 100
    assert with_giant["longest_ids"] == 64
