"""README.md, docs/*.md and benchmarks/README.md say what is true today.

The README's commands that a CPU can run are run as written; every trainer, predict,
benchmark and launch command in any page is checked against the flags it names; every
page is linked from the README, every link lands, and every measured number names the
results file it comes from.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from absl import flags as absl_flags

from tests.conftest import REPO, trainer_env
from trainer import flags

README = REPO / "README.md"
BENCHMARKS_README = REPO / "benchmarks" / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, BENCHMARKS_README]
RESULTS = REPO / "benchmarks" / "results"
# The benchmarks whose JSON goes to benchmarks/results/ (gpu_check writes gpu_check.json
# beside its runs instead).
BENCHMARKS = sorted(path.stem for path in (REPO / "benchmarks").glob("*.py")
                    if path.stem not in ("__init__", "contenders", "torch_contender", "gpu_check"))

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# An accuracy to 4 places, a speed-up or seconds with a decimal, a rate: what a benchmark
# measured (settings such as 0.999, 0.001 or 10x do not match).
_MEASURED = re.compile(r"\b0\.\d{4}\b|\b\d+\.\d+x\b|\b\d+\.\d+ s\b"
                       r"|\b\d+(?:\.\d+)? (?:examples/s|GFLOP/s)")
_RESULTS_FILE = re.compile(rf"\b(?:{'|'.join(BENCHMARKS)})[\w.-]*\.json\b")


def shell_commands(page: Path) -> list[str]:
    """The commands in a page's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for language, body in _FENCE.findall(page.read_text()):
        if language != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True):
                commands.append(line.strip())
    return commands


def prose_blocks(page: Path) -> list[str]:
    """A page's paragraphs, lists and tables, code blocks left out.

    A paragraph ending in a colon introduces the next block (a table, a list) and is one
    block with it.
    """
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", _FENCE.sub("", page.read_text())):
        if blocks and blocks[-1].rstrip().endswith(":"):
            blocks[-1] += "\n\n" + block
        elif block.strip():
            blocks.append(block)
    return blocks


def headings(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#+ (.+)$", _FENCE.sub("", page.read_text()), re.M)}


def test_the_front_page_and_the_benchmark_notes_stay_short():
    assert len(README.read_text().splitlines()) <= 300
    assert len(BENCHMARKS_README.read_text().splitlines()) <= 200


def test_every_page_in_docs_is_linked_from_the_readme():
    assert DOCS, "docs/ holds the pages the README links to"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", README.read_text()))
    assert {f"docs/{page.name}" for page in DOCS} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_link_lands_on_a_file_and_a_heading(page):
    text = _FENCE.sub("", page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in headings(linked), f"{page.name} links to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_measured_number_names_its_results_file(page):
    for block in prose_blocks(page):
        without_code = re.sub(r"`[^`]*`", "", block)  # Example output, flag values.
        if _MEASURED.search(without_code):
            assert _RESULTS_FILE.search(block), (
                f"{page.relative_to(REPO)}: measured numbers without their results file:\n{block}")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_results_file_named_is_there(page):
    for name in _RESULTS_FILE.findall(page.read_text()):
        assert (RESULTS / Path(name).name).is_file(), f"{page.name} names {name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_no_page_tells_the_history_of_the_work(page):
    text = page.read_text()
    for title in re.findall(r"^#+ .+$", text, re.M):
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", title), f"{page.name}: dated {title!r}"
    assert not re.search(r"\b(first|second|third|fourth|fifth|sixth|next|last) session\b",
                         text, re.I), f"{page.name} tells the sessions of the work"


def test_the_readmes_test_command_is_what_ci_runs():
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith("#")]
    assert ci[-1] in shell_commands(README)


# --- Every command in every page names only flags its program has. -----------------------

def _trainer_config(argv: list[str]):
    """What ``python -m trainer.main ARGV`` would train with (validated), without running it."""
    values = absl_flags.FlagValues()
    for flag in absl_flags.FLAGS.get_flags_for_module(flags.__name__):
        values[flag.name] = flag
    values.unparse_flags()
    values(["trainer", *argv])
    return flags.to_config(values)


def _argparse_options(module: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", module.read_text()))


def _absl_flags(module: Path) -> set[str]:
    names = re.findall(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"", module.read_text())
    return {f"--{name}" for name in names} | {f"--no{name}" for name in names}


def _launch_options(script: str) -> set[str]:
    """The options ``launch/SCRIPT --help`` names: its usage line and its settings."""
    out = subprocess.run(["bash", str(REPO / script), "--help"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    usage = set(re.findall(r"\[(--[\w-]+)\]", out.splitlines()[0]))
    settings = re.findall(r"^  ([A-Z][A-Z0-9_]+) ", out, re.M)
    return usage | {"--" + name.lower().replace("_", "-") for name in settings}


def _option_names(words: list[str]) -> set[str]:
    return {word.split("=", 1)[0] for word in words if word.startswith("--")}


def _after(words: list[str], marker: str) -> list[str]:
    return words[words.index(marker) + 1:]


def _program_words(command: str) -> Iterator[list[str]]:
    """The words of the command's program, past any VAR=value and before any | or &&."""
    for part in re.split(r"\s(?:\||&&)\s", command):
        words = shlex.split(part, comments=True)
        while words and re.match(r"^[A-Z_]+=", words[0]):
            words = words[1:]
        if words and "pip" not in words[0] and words[:3] != ["python3", "-m", "venv"]:
            yield words


def _inline_commands(page: Path) -> list[str]:
    """``python -m trainer.X ...`` and ``python -m benchmarks.X ...`` written inline."""
    return re.findall(r"`((?:\.venv/bin/)?python -m (?:trainer|benchmarks)\.[^`]*)`",
                      _FENCE.sub("", page.read_text()))


def _page_commands() -> list[tuple[str, list[str]]]:
    return [(f"{page.relative_to(REPO)}: {command}", words)
            for page in PAGES for command in [*shell_commands(page), *_inline_commands(page)]
            for words in _program_words(command)]


@pytest.mark.parametrize("where, words", _page_commands(), ids=lambda x: "" if isinstance(
    x, list) else x[:90])
def test_every_command_in_the_pages_names_only_its_programs_flags(where, words, monkeypatch):
    monkeypatch.chdir(REPO)  # --flagfile=configs/... is relative to the repository.
    for name in ("TF_CONFIG", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    program = words[0]
    if "-m" in words:
        module = words[words.index("-m") + 1]
        argv = [word for word in _after(words, module) if word not in ("--help", "--helpfull")]
        if "<" in module:
            return  # python -m benchmarks.<name>: a pattern, not a command.
        if module in ("trainer.main", "trainer.doctor"):
            _trainer_config(argv)
        elif module == "trainer.predict":
            assert _option_names(argv) <= _absl_flags(REPO / "trainer" / "predict.py"), where
        elif module == "benchmarks.gpu_check":
            own = _argparse_options(REPO / "benchmarks" / "gpu_check.py")
            _trainer_config([word for word in argv if word.split("=")[0] not in own])
        elif module.startswith("benchmarks."):
            path = REPO / "benchmarks" / f"{module.split('.')[1]}.py"
            assert _option_names(argv) <= _argparse_options(path) | {"--help"}, where
    elif program.startswith("launch/"):
        own = words[1:words.index("--")] if "--" in words else words[1:]
        assert _option_names(own) <= _launch_options(program), where
        if "--" in words:
            _trainer_config(_after(words, "--"))


def test_every_install_extra_named_exists():
    setup = (REPO / "setup.py").read_text()
    for page in PAGES:
        for extras in re.findall(r"'\.\[([\w,]+)\]'|`\.\[([\w,]+)\]`", page.read_text()):
            for extra in ",".join(extras).split(","):
                if extra:
                    assert f'"{extra}":' in setup, f"{page.name} names the extra .[{extra}]"


# --- The README's commands, run as written. ------------------------------------------------

def _not_run(command: str) -> str:
    """Why this test leaves a README command to others ('' = it runs here)."""
    if "-m pytest" in command:
        return "the suite itself (.ci/run runs the README's test command verbatim)"
    if "trainer.main" in command and "--smoke_test" not in command:
        return "a full training run (its flags are checked above)"
    return ""


@pytest.mark.slow
def test_the_readmes_commands_run_on_a_cpu_as_written(imdb_archive, tmp_path):
    # A copy of the repository's layout, so the commands' relative paths (.venv,
    # ../shared/data/..., runs/smoke) hold and the run folder lands in tmp_path.
    root = tmp_path / "main"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("runs", ".git"):
            (root / entry.name).symlink_to(entry)
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    (data / "aclImdb_v1_labeled.tar.gz").symlink_to(imdb_archive)

    ran = []
    for command in shell_commands(README):
        # An install step (venv, pip) is the machine's setup: .ci/run runs it on a clean clone.
        steps = [step for step in command.split(" && ")
                 if not step.startswith("python3 -m venv") and "pip install" not in step]
        for step in steps:
            if _not_run(step):
                continue
            # A command that writes a run or reads the shared data runs in the copy; the
            # others (ruff) in the repository itself, whose symlinked folders they would skip.
            cwd = root if "runs/" in step or "../shared/" in step else REPO
            process = subprocess.run(["bash", "-c", step], cwd=cwd, env=trainer_env(),
                                     capture_output=True, text=True, timeout=600)
            assert process.returncode == 0, (step, process.stderr[-3000:])
            ran.append((step, process))
    commands = " ".join(step for step, _ in ran)
    assert "--smoke_test" in commands and "trainer.predict" in commands, commands
    predictions = next(process.stdout for step, process in ran if "trainer.predict" in step)
    assert len(predictions.splitlines()) == 2 and "positive" in predictions, predictions
