"""Every relative link and image in the project's Markdown (the READMEs, the findings and the generated tables
beside the records in ``<subproject>/results/<study>/``) names a file or folder that exists, so a moved record
folder cannot leave a README pointing at nothing or an image that does not render."""
from __future__ import annotations

import re
from pathlib import Path

from common import results

ROOT = results.ROOT
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
SKIPPED = {".git", ".venv", "runs", "data", "data_cache", ".pytest_cache", "node_modules", "build", "dist"}


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The Markdown files of the checkout, without scratch folders (runs/, data/, the environment)."""
    return sorted(p for p in root.rglob("*.md") if not SKIPPED & set(p.relative_to(root).parts[:-1]))


def broken_links(md: Path) -> list[str]:
    """``file: target`` for each relative link or image of ``md`` (outside code blocks) whose target is missing;
    web addresses, mail links and anchors within the file are not checked."""
    text = FENCE.sub("", md.read_text(encoding="utf-8"))
    found = []
    for target in LINK.findall(text):
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-z][a-z0-9+.-]*:", path, re.I) or path.startswith("/"):
            continue
        if not (md.parent / path).exists():
            found.append(f"{md.relative_to(ROOT) if md.is_relative_to(ROOT) else md}: {target}")
    return found


def test_every_relative_link_resolves():
    files = markdown_files()
    assert any(p.name == "README.md" and p.parent == ROOT for p in files)
    assert [p for p in files if "results" in p.parts], "no Markdown found under a results folder"
    broken = [b for md in files for b in broken_links(md)]
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_a_broken_link_or_image_is_found(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("| a |\n")
    md = tmp_path / "README.md"
    md.write_text("[table](results/table.md#a) [web](https://example.org) [here](#top)\n"
                  "![curve](results/curve.png) [old](figures/table.md)\n"
                  "```\n[in code](not/checked.md)\n```\n", encoding="utf-8")
    assert [b.rsplit(": ", 1)[1] for b in broken_links(md)] == ["results/curve.png", "figures/table.md"]
