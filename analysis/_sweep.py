"""Shared helper of the reproduction scripts: a sweep of runs whose rows go to a CSV as they
finish, so that a rerun resumes where an interrupt left it."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path


def resumable_sweep(
    path: Path, fields: tuple[str, ...], keys: Iterable[tuple[str, ...]], run: Callable[[tuple[str, ...]], dict]
) -> list[dict]:
    """All rows of the CSV at ``path`` after running ``run(key)`` for every key not already
    there. A key holds the values of the first ``len(key)`` fields; ``run`` returns the others.
    Each new row is appended and printed (JSON) as soon as it is done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fields, extrasaction="ignore")
        if not rows:
            writer.writeheader()
        for key in keys:
            if any(tuple(r[f] for f in fields[: len(key)]) == key for r in rows):
                continue
            row = dict(zip(fields, key)) | run(key)
            writer.writerow(row)
            file.flush()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows
