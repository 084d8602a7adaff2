"""Every README's quick commands, exactly as a user reads them (the fenced bash block after its
``<!-- quick-commands ... -->`` line), run in order in a fresh folder: each exits 0, and its plot command draws
figures from what the commands before it made. The test suite's own command is the one line left out (the suite
cannot run itself)."""
from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import procs
import pytest

REPO = Path(__file__).resolve().parents[1]
# the longest lists first (they start first when two run at a time): about 37, 29, 18 and 13 s on 2 idle cores
READMES = ["README.md", "mamba_fl/README.md", "lora_glue_fl/README.md", "llm_noniid/README.md",
           "vit_sparse_fl/README.md"]
MARK = "<!-- quick-commands"
FOLDERS = ("common", "plots", "mamba_fl", "vit_sparse_fl", "lora_glue_fl", "llm_noniid")  # what commands name

# about 15-40 s a README on 2 idle cores (a quick run or two, then the plot); two READMEs at a time
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def quick_commands(readme: Path) -> list[str]:
    """The commands of the fenced block after the README's quick-commands mark: continuation lines joined,
    comments and the test suite's own command left out."""
    text = readme.read_text(encoding="utf-8")
    at = text.find(MARK)
    assert at >= 0, f"{readme}: no {MARK} mark before its quick commands"
    block = re.search(r"```bash\n(.*?)```", text[at:], re.S)
    assert block and text[at:block.start() + at].count("\n") == 1, f"{readme}: the mark is not right above a bash block"
    commands = re.sub(r"\\\n\s*", " ", block.group(1)).splitlines()
    commands = [c.split(" #", 1)[0].strip() for c in commands]
    return [c for c in commands if c and not c.startswith("#") and "pytest" not in c]


def test_every_readme_has_quick_commands_and_a_plot():
    for name in READMES:
        commands = quick_commands(REPO / name)
        assert commands and commands[-1].startswith("python plots/plot_"), (name, commands)


def command_lists() -> dict[str, list[str]]:
    """{README names joined by ' + ': their quick commands}, one entry per distinct list: READMEs that give the same
    commands (the top README repeats mamba_fl's quick start) share one run of them, under all their names."""
    by_commands: dict[tuple[str, ...], list[str]] = {}
    for name in READMES:
        by_commands.setdefault(tuple(quick_commands(REPO / name)), []).append(name)
    return {" + ".join(names): list(commands) for commands, names in by_commands.items()}


def run_in_a_fresh_folder(name: str, folder: Path) -> None:
    """``name``'s quick commands in order in ``folder``, which holds only links to the code, as a fresh clone
    would: each exits 0, the plot command last, drawing figures from the runs the commands before it made."""
    for code in FOLDERS:
        (folder / code).symlink_to(REPO / code, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    commands = command_lists()[name]
    for command in commands:
        cmd = re.sub(r"^python\b", sys.executable, command)
        done = procs.run(["bash", "-c", cmd], f"{name}: `{command}`", 420, cwd=folder, env=env)
        assert done.returncode == 0, f"{name}: `{command}` exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert list((folder / "figures").rglob("*.png")), f"{name}: `{commands[-1]}` drew nothing:\n{done.stdout}"


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """{name: the future of ``run_in_a_fresh_folder``} for the lists this session tests, started together and run
    two at a time (each command is one process of one thread: a second core would otherwise wait idle)."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_readme_quick_commands_run_in_a_fresh_folder"]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(run_in_a_fresh_folder, name, tmp_path_factory.mktemp("readme"))
                   for name in names}
        yield futures
        for future in futures.values():  # a test interrupted early: the lists not started yet are not run
            future.cancel()


@pytest.mark.parametrize("name", list(command_lists()))
def test_readme_quick_commands_run_in_a_fresh_folder(name, runs):
    """Each command of the README exits 0 in a fresh folder, the plot command last drawing figures
    (``run_in_a_fresh_folder``)."""
    runs[name].result()
