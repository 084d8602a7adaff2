"""What the plot scripts share: picking their runs out of a folder, grouping them, listing the files written."""
from __future__ import annotations

from pathlib import Path

from common import runs as R


def script_runs(runs: list[dict], mine, what: str, args: dict | None = None, summary: dict | None = None
                ) -> list[dict]:
    """The runs whose script (args.json's "script") ``mine`` accepts, the others counted in one line; of those, a
    run without the ``args`` / ``summary`` keys that ``what`` reads is left out with a line (``R.with_keys``)."""
    kept = [r for r in runs if mine(str(r["meta"].get("script", "")))]
    if len(kept) < len(runs):
        print(f"ignored {len(runs) - len(kept)} run(s) of other scripts")
    return R.with_keys(kept, what, args, summary)


def groups_by(runs: list[dict], key) -> dict:
    """{key(run): runs}, keys in first-seen order."""
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def listed(written: list[Path]) -> dict:
    """Prints the files written, one a line; ``main``'s answer {"figures": [their paths]}."""
    print(*written, sep="\n")
    return {"figures": [str(p) for p in written]}
