"""The README's answer table says what the committed result files say (docs/fashion-mnist/<task>/summary.json,
written by `hgsearch frontier`): every number of both columns is checked against them, so the table cannot
drift from the files that back it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {"superres": 1, "classify": 2}  # the table's column of each task


def _table() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| | super-resolution x2 | generative classification |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def _summary(task: str) -> dict:
    return json.loads((ROOT / "docs" / "fashion-mnist" / task / "summary.json").read_text())


def _budgets(label: str) -> dict[str, str]:
    """'gap ..., best model <= 2.0M (classify: 2.5M)' -> {'superres': '2.0', 'classify': '2.5'}."""
    m = re.search(r"<= ([\d.]+)M(?: \(classify: ([\d.]+)M\))?", label)
    assert m, label
    return {"superres": m[1], "classify": m[2] or m[1]}


@pytest.mark.parametrize("task", COLUMNS)
def test_the_readme_answer_is_what_the_committed_files_say(task):
    rows, s = _table(), _summary(task)
    col, c = COLUMNS[task], s["comparison"]
    cell = {label: cells[col] for label, cells in rows.items()}

    assert cell["trivial baseline (val)"].startswith(f"{s['baseline']['psnr_val']:.2f} dB")
    h, v = c["front_sizes"]
    assert cell["frontier points (hourglass, conventional)"] == f"{h}, {v}"
    winner = lambda x: "Hourglass" if x > 0 else "conventional"  # noqa: E731
    d = c["hv_difference"]
    assert cell["hypervolume difference, whole range (dB x M params)"] == f"{d:+.2f} ({winner(d)})"
    d = c["hv_shared_difference"]
    assert cell["same, on the range both families reach"] == (
        f"{d:+.2f} ({winner(d)}), from {c['shared_from'] / 1e6:.1f}M")

    gap_rows = [label for label in cell if label.startswith("gap")]
    assert len(gap_rows) == 3
    for label in gap_rows:
        budget = _budgets(label)[task]
        [b] = [b for b in c["bins"] if f"{b['hi'] / 1e6:.1f}".rstrip("0").rstrip(".") == budget.rstrip("0").rstrip(".")]
        lo, hi = b["ci"]
        assert cell[label].startswith(f"{b['gap']:+.2f} dB [{lo:+.2f}, {hi:+.2f}]"), (label, b)
        assert f"({b['hourglass']:.2f} vs {b['conventional']:.2f})" in cell[label], (label, b)

    points = s["frontier"]
    for family, label in (("hourglass", "best Hourglass (LxWxd_h, params)"), ("conventional", "best conventional")):
        best = max((p for p in points if p["family"] == family), key=lambda p: p["psnr_val"])
        shape = f"{best['depth']}x{best['width']}x{best['bottleneck']}"
        assert cell[label] == f"{shape}, {best['params'] / 1e6:.2f}M: {best['psnr_val']:.2f} dB", (label, best)
