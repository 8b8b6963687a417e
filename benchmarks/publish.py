"""Every benchmark ends the same way: its report as JSON and as a Markdown table in the
results folder, each written atomically, so an interrupted run leaves the old pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeas.fileio import atomic_write_text


def write_results(out_dir: Path, stem: str, report: dict[str, Any], table: str) -> None:
    """`out_dir/<stem>.json` and `out_dir/<stem>.md`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / f"{stem}.md", table)
