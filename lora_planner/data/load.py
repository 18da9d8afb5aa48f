"""Load labelled text from CSV or JSONL into plain Python lists (deterministic, no torch)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoraPlannerError, nearest


@dataclass(frozen=True)
class Records:
    texts: tuple[str, ...]
    labels: tuple[int, ...]  # index into label_names
    label_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def load_records(path: str | Path, text_column: str = "text", label_column: str = "label",
                 num_labels: int | None = None) -> Records:
    """Read a CSV (header row) or JSONL file; labels are mapped to 0..C-1 in sorted order.

    Raises:
        LoraPlannerError: missing file or column (the existing columns are listed), an empty file,
        or more distinct labels than ``num_labels``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LoraPlannerError("--data", "a readable CSV or JSONL file", str(path), f"({exc.strerror}) Check the path.") from None
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise LoraPlannerError("--data", "one JSON object per line", f"{path.name} line {i + 1}", "Fix that line.") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise LoraPlannerError("--data", "a file with at least one record", f"{path} (empty)", "")
    columns = list(rows[0].keys())
    for field, col in (("--text-column", text_column), ("--label-column", label_column)):
        if col not in columns:
            raise LoraPlannerError(field, f"a column of {path.name}", col, nearest(col, columns))
    names = tuple(sorted({str(r[label_column]) for r in rows}))
    if num_labels is not None and len(names) > num_labels:
        raise LoraPlannerError("--num-labels", f"at least the {len(names)} distinct labels of {path.name}", num_labels,
                               f"Use --num-labels {len(names)}.")
    index = {n: i for i, n in enumerate(names)}
    return Records(tuple(str(r[text_column]) for r in rows), tuple(index[str(r[label_column])] for r in rows), names, str(path))
