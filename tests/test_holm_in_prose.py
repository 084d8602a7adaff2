"""Every Holm-adjusted p-value the READMEs and findings state in prose says over how many comparisons it was
corrected ("p_Holm = 0.03 over 6"): the same p means little without its family's size. Generated results blocks
and tables are left to their code (a generated table names its family in its caption)."""
from __future__ import annotations

import re
from pathlib import Path

from test_readme_links import FENCE, ROOT, markdown_files

from common import results

# p_Holm and its value (or values: "0.0029 and 0.0025"); what follows must be "over"
VALUE = r"(?:[<=≈]\s*)?\d[\d.e−-]*"
MENTION = re.compile(rf"p_Holm\s*{VALUE}(?:\s*and\s*{VALUE})*")


def prose(text: str) -> str:
    """``text`` without results blocks, code blocks and table rows, its lines joined (a value may wrap)."""
    text = FENCE.sub("", results.BLOCK.sub("", text))
    return " ".join(line.strip() for line in text.splitlines() if not line.lstrip().startswith("|"))


def bare_p_holm(md: Path) -> list[str]:
    """The p_Holm mentions of ``md``'s prose that do not say "over m"."""
    text = prose(md.read_text(encoding="utf-8"))
    return [f"{md.relative_to(ROOT) if md.is_relative_to(ROOT) else md}: ...{text[max(m.start() - 50, 0):m.end()]}"
            for m in MENTION.finditer(text) if not re.match(r"\s*over\b", text[m.end():])]


def test_every_p_holm_in_the_prose_says_over_how_many():
    files = [p for p in markdown_files() if p.name in ("README.md", "findings.md")]
    assert any(p.name == "findings.md" for p in files)
    bare = [b for md in files for b in bare_p_holm(md)]
    assert not bare, "p_Holm without its family's size:\n" + "\n".join(bare)


def test_a_bare_p_holm_is_found(tmp_path):
    md = tmp_path / "findings.md"
    md.write_text("a (p_Holm = 0.03 over 6), b (p_Holm 0.0029 and 0.0025 over the table's 4), c (p_Holm\n"
                  "  0.04), d p_Holm < 0.001 and e (p_Holm 0.5 and 0.2)\n| table | p_Holm 0.01 |\n"
                  "<!-- results:x -->\np_Holm 0.5\n<!-- /results:x -->\n", encoding="utf-8")
    assert [b.rsplit("p_Holm", 1)[1] for b in bare_p_holm(md)] == [" 0.04", " < 0.001", " 0.5 and 0.2"]
