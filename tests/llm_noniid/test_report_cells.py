"""The README blocks that quote a grid report read its cells back from run_experiments.py's Markdown
(``llm_noniid.results.tables`` / ``Table.cell``): a cell is found by its row's leading labels and its column's header
(the nth of a repeated header), and a missing one is refused in one line rather than quoted wrong."""
from __future__ import annotations

import pytest

from common.errors import UsageError
from llm_noniid import results as L

REPORT = """### headline grid

| partition | arm | final ppl | Δ vs FedAvg | personalised ppl | Δ vs FedAvg |
|---|---|---|---|---|---|
| iid | FedAvg | 94.3 ± 2.2 | – | 90.6 ± 3.5 | – |
| iid | SCAFFOLD | 93.2 ± 2.2 | -1.0 [-1.1, -1.0] (n=3; p_Holm = 0.0028 over 12) | 89.5 | -1.1 [-3.6, +1.4] (n=3) |

Budget check:

| partition | seed | gain from doubling |
|---|---|---|
| iid | 0 | -1.2 % |
"""


def test_cells_by_labels_and_repeated_headers():
    grid, budget = L.tables(REPORT.split("\n"))
    assert grid.cell("final ppl", "iid", "SCAFFOLD") == "93.2 ± 2.2"
    assert grid.cell("Δ vs FedAvg", "iid", "SCAFFOLD").endswith("over 12)")
    assert grid.cell("Δ vs FedAvg", "iid", "SCAFFOLD", nth=1) == "-1.1 [-3.6, +1.4] (n=3)"
    assert grid.arms("iid") == ["FedAvg", "SCAFFOLD"]
    assert budget.cell("gain from doubling", "iid", "0") == "-1.2 %"
    assert L.interval(grid.cell("Δ vs FedAvg", "iid", "SCAFFOLD")) == (-1.0, -1.1, -1.0)
    assert L.holm_count([grid.cell("Δ vs FedAvg", "iid", a, nth=n) for a in ("FedAvg", "SCAFFOLD") for n in (0, 1)]) \
        == "1 of 2"


def test_a_missing_cell_is_refused():
    grid, _ = L.tables(REPORT.split("\n"))
    with pytest.raises(UsageError, match="no cell 'final ppl' in row iid / IFCA"):
        grid.cell("final ppl", "iid", "IFCA")
    with pytest.raises(UsageError, match="no cell 'best ppl'"):
        grid.cell("best ppl", "iid", "FedAvg")
