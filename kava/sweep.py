"""Hydra multirun support: a summary table of every run's final metrics (failed runs included)."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kava.config import SWEPT_KEYS_ENV, swept_keys

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"


def _job_number(path: Path) -> int:
    head = path.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job directory: the overrides that vary across the sweep, status and final metrics."""
    jobs = sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and (p / ".hydra").exists()), key=_job_number)
    overrides = {}
    for job in jobs:
        lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
        overrides[job] = [line[2:].strip().strip("'\"") for line in lines if line.startswith("- ")]
    counts: dict[str, set[str]] = {}
    for ov in overrides.values():
        for o in ov:
            counts.setdefault(o.split("=", 1)[0], set()).add(o)
    varying = {k for k, v in counts.items() if len(v) > 1} or set(counts)
    rows = []
    for job in jobs:
        shown = [o for o in overrides[job] if o.split("=", 1)[0] in varying]
        row: dict[str, Any] = {"run": job.name, "overrides": " ".join(shown)}
        if (job / FAILED_FILE).exists():
            row.update(status="failed", error=json.loads((job / FAILED_FILE).read_text())["error"])
        elif (job / METRICS_FILE).exists():
            row.update(status="ok", **json.loads((job / METRICS_FILE).read_text()))
        else:
            row.update(status="missing")
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path, keys: tuple[str, ...] = ("val/acc", "val/loss", "train/loss")) -> Path:
    """``summary.csv`` (every metric) and ``summary.md`` (the main ones) in the sweep directory."""
    rows = collect(sweep_dir)
    sweep = Path(sweep_dir)
    columns = ["run", "overrides", "status"] + sorted({k for r in rows for k in r} - {"run", "overrides", "status"})
    with open(sweep / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [k for k in keys if any(k in r for r in rows)]
    lines = ["| run | overrides | status | " + " | ".join(shown) + " |", "|---" * (3 + len(shown)) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in shown]
        status = r["status"] if r["status"] != "failed" else f"failed: {r.get('error', '')[:80]}"
        lines.append(f"| {r['run']} | {r['overrides']} | {status} | " + " | ".join(cells) + " |")
    (sweep / "summary.md").write_text("\n".join(lines) + "\n")
    return sweep / "summary.md"


class SweepSummary(Callback):
    """Names the jobs' folders by the swept keys and writes the summary table when a multirun ends, then exits
    non-zero if any run failed (for schedulers)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEPT_KEYS_ENV] = ",".join(sorted(swept_keys(list(config.hydra.overrides.task))))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(SWEPT_KEYS_ENV, None)
        path = write_summary(config.hydra.sweep.dir)
        log.info("sweep summary: %s", path)
        failed = [r["run"] for r in collect(config.hydra.sweep.dir) if r["status"] != "ok"]
        if failed:
            raise SystemExit(f"{len(failed)} sweep run(s) failed or left no metrics: {', '.join(failed)} (see {path})")
