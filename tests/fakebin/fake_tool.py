#!/usr/bin/env -S python3 -S
"""Stand-ins for gcloud, docker, nvidia-smi, curl, apt-get and shutdown (tests/test_launch.py).

Each one appends one JSON line {"tool", "argv", "env", "files", "stdin"} to the file named by
$FAKE_LOG, so a test can assert exactly what a launch/ script asked for, and contacts nothing.
"files" holds the text of local files named in the arguments (job configs, metadata files)
and the member list of .tar.gz ones, read while they still exist. Try the cloud scripts
offline with:  PATH=tests/fakebin:$PATH FAKE_LOG=/dev/stderr launch/gce_vm.sh ...

Knobs (environment): FAKE_FAIL=substring makes a gcloud/docker call whose arguments contain it
exit 1; FAKE_GPUS=N|fail for nvidia-smi; FAKE_METADATA_DIR for curl (one file per metadata
key). `gcloud storage ls|cp` on local paths (a folder standing in for the bucket) really
look and copy, so a test can run the VM's scripts against a local "bucket".
Linked as bin/python in a throwaway virtualenv it plays the virtualenv's Python:
FAKE_TF_GPUS (GPUs TensorFlow sees), FAKE_TRAINER_RC, FAKE_TRAINER_SLEEP and
FAKE_FAIL_WORKER (the TF_CONFIG task index that fails) shape `-m trainer.main`;
FAKE_DOCTOR_RC is the exit code of `-m trainer.doctor`.
"""

import json
import os
import re
import sys
import time

TOOL = os.path.basename(sys.argv[0])
ARGS = sys.argv[1:]
ENV_KEYS = ("TF_CONFIG", "VENV", "AIP_MODEL_DIR")


def files_named(args):
    found = {}
    for arg in args:
        for piece in re.split(r"[=,]", arg):
            if not (piece.startswith("/") and os.path.isfile(piece)):
                continue
            if piece.endswith(".tar.gz"):
                import tarfile  # only a few calls need it

                with tarfile.open(piece) as archive:
                    found[piece] = archive.getnames()
            else:
                with open(piece, encoding="utf-8", errors="replace") as file:
                    found[piece] = file.read()
    return found


def record(**extra):
    entry = {"tool": TOOL, "argv": ARGS, "pid": os.getpid(),
             "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
             "files": files_named(ARGS), **extra}
    with open(os.environ.get("FAKE_LOG", os.devnull), "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


def fake_python():
    if ARGS[:2] == ["-m", "trainer.main"]:
        record()
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {}).get("index")
        print(f"fake trainer (task {task}) {ARGS[2:]}", flush=True)
        if task is not None and str(task) == os.environ.get("FAKE_FAIL_WORKER"):
            time.sleep(0.5)
            print("fake trainer: failing on purpose", flush=True)
            return 3
        time.sleep(float(os.environ.get("FAKE_TRAINER_SLEEP", "0")))
        return int(os.environ.get("FAKE_TRAINER_RC", "0"))
    if ARGS[:2] == ["-m", "trainer.doctor"]:
        record()
        print(f"fake doctor {ARGS[2:]}", flush=True)
        return int(os.environ.get("FAKE_DOCTOR_RC", "0"))
    code = ARGS[ARGS.index("-c") + 1] if "-c" in ARGS else ""
    record()
    if "list_physical_devices" in code:  # gpu.sh: how many GPUs TensorFlow sees
        print(os.environ.get("FAKE_TF_GPUS", "1"))
        return 0
    if "find_spec" in code:  # common.sh: is the trainer installed here?
        return int(os.environ.get("FAKE_NOT_INSTALLED", "0"))
    if "socket" in code:  # multiworker.sh: pick free ports for real
        sys.argv = ["-c", *ARGS[ARGS.index("-c") + 2:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    return 0  # pip install and anything else


def main():
    if TOOL == "python":
        return fake_python()
    if TOOL == "nvidia-smi":
        record()
        gpus = os.environ.get("FAKE_GPUS", "1")
        if gpus == "fail":
            print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
            return 9
        for i in range(int(gpus)):
            print(f"{i}, NVIDIA L4, 23034 MiB")
        return 0
    if TOOL == "curl":
        record()
        key = ARGS[-1].rstrip("/").rsplit("/", 1)[-1]
        path = os.path.join(os.environ.get("FAKE_METADATA_DIR", "/nonexistent"), key)
        if not os.path.isfile(path):
            return 22  # curl -f on HTTP 404
        with open(path, encoding="utf-8") as file:
            sys.stdout.write(file.read())
        return 0
    stdin = sys.stdin.read() if "-" in ARGS else None  # gcloud storage cp - DEST
    record(stdin=stdin)
    fail = os.environ.get("FAKE_FAIL")
    if fail and fail in " ".join([TOOL, *ARGS]):
        return 1
    if TOOL == "gcloud" and ARGS[:1] == ["storage"]:
        return local_storage(ARGS[1:], stdin)
    return 0


def local_storage(args, stdin):
    """`gcloud storage ls PATH` and `cp SRC DEST` done for real when the paths are local."""
    import shutil

    paths = [a for a in args[1:] if not a.startswith("--")]
    if not paths or not all(p == "-" or p.startswith("/") for p in paths):
        return 0  # gs:// and anything else: recorded only
    if args[0] == "ls":
        return 0 if all(os.path.exists(p) for p in paths) else 1
    if args[0] != "cp" or len(paths) != 2:
        return 0
    source, dest = paths
    if dest.endswith("/"):
        os.makedirs(dest, exist_ok=True)
        dest = os.path.join(dest, os.path.basename(source))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if source == "-":
        with open(dest, "w", encoding="utf-8") as file:
            file.write(stdin)
    else:
        shutil.copyfile(source, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
