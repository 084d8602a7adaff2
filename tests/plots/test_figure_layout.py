"""Every figure of every plot script, drawn from quick runs (the session's ``mixed`` folder, and each subproject's
quick run alone as a README's first commands leave it), reads at a glance: no overlapping texts, no empty panel,
no band or error bar claimed over one seed, a file name without spaces or brackets, at least 1,000 px wide
(``figurecheck``); so does the perplexity.png a language-model run leaves in its folder."""
from __future__ import annotations

import shutil

import pytest
from figurecheck import checked_figures, figure_problems, saved_problems

from common import runs as R
from common.curves import perplexity_curve
from plots import plot_llm_noniid, plot_lora_glue, plot_mamba, plot_vit

pytestmark = pytest.mark.timeout(1500)  # the session's ``mixed`` runs, when this module trains them

SCRIPTS = {"mamba_fl": plot_mamba, "vit_sparse_fl": plot_vit, "lora_glue_fl": plot_lora_glue,
           "llm_noniid": plot_llm_noniid}
# each README's quick runs: the folder names their scripts give them
QUICK = {"mamba_fl": ("fedavg_pure_ssm*",), "vit_sparse_fl": ("fedavg_iid_*",),
         "lora_glue_fl": ("fedavg_sst2_*_s0", "central_lora_*"), "llm_noniid": ("fedavg_iid_*_s0",)}


def _draw(script, runs, out, monkeypatch) -> tuple[list[str], list]:
    with checked_figures(monkeypatch) as (problems, saved):
        script.main(["--runs", str(runs), "--out", str(out)])
    return problems, saved


@pytest.mark.parametrize("project", SCRIPTS)
def test_figures_of_every_run_read_at_a_glance(project, mixed, tmp_path, monkeypatch):
    problems, saved = _draw(SCRIPTS[project], mixed, tmp_path / "figs", monkeypatch)
    assert saved and problems == []


@pytest.mark.parametrize("project", SCRIPTS)
def test_figures_of_the_quick_runs_alone_read_at_a_glance(project, mixed, tmp_path, monkeypatch):
    """What a README's first commands leave: the quick run(s) alone, one seed each."""
    root = tmp_path / "runs"
    for pattern in QUICK[project]:  # the first run of this project's scripts (vit's and llm's quick names overlap)
        for run in [r for r in sorted(mixed.glob(pattern))
                    if str(R.load_run(r)["meta"].get("script", "")).startswith(project)][:1]:
            shutil.copytree(run, root / run.name, ignore=shutil.ignore_patterns("model", "checkpoint*", "*.pt"))
    assert root.is_dir()
    if project == "lora_glue_fl":  # as the README's quick runs: the two score evaluation sets of their own size
        central = next(root.glob("central_lora_*")) / "args.json"
        central.write_text(central.read_text().replace('"max_eval_samples": 32', '"max_eval_samples": 64'))
    problems, saved = _draw(SCRIPTS[project], root, tmp_path / "figs", monkeypatch)
    assert saved and problems == []


def test_a_runs_own_perplexity_figure_reads_at_a_glance(mixed, tmp_path, monkeypatch):
    run = R.load_run(next(mixed.glob("fedavg_pure_ssm*")))
    with checked_figures(monkeypatch) as (problems, saved):
        perplexity_curve(run["rows"], tmp_path / "perplexity.png", title=run["name"], refs=run["summary"])
    assert len(saved) == 1 and problems == []


def test_the_checks_see_what_they_check(tmp_path):
    """Each check fails on a figure that has its fault."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(4, 3))
    a.plot([0, 1], [0, 1], label="x")
    a.set_title("a long title that runs into its neighbour's title")
    b.set_title("the neighbour")
    fig.suptitle("lines: mean over seeds; bands: ± sample sd")
    problems = figure_problems(fig, "f.png")
    assert any("texts overlap" in p for p in problems)
    assert any("empty panel 'the neighbour'" in p for p in problems)
    assert any("claims a spread" in p for p in problems)
    b.fill_between([0, 1], [0, 0], [1, 1])
    b.set_title("")
    assert not any("spread" in p or "empty" in p for p in figure_problems(fig, "f.png"))
    plt.close(fig)


def test_the_saved_file_checks_see_what_they_check(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    path = tmp_path / "rounds_sst2 [max_eval_samples=300].png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    problems = saved_problems([path])
    assert any("spaces, quotes or brackets" in p for p in problems) and any("400 px wide" in p for p in problems)
    written = R.savefig(plt.subplots(figsize=(4, 3))[0], path)  # the shared save: a safe name, 1,000 px or more
    assert [p.name for p in written] == ["rounds_sst2_max_eval_samples-300.png"] and saved_problems(written) == []
