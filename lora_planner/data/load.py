"""Load labelled text from CSV, JSONL or a local Hugging Face `datasets` folder (no torch).

Two task shapes share one reader:
- sequence classification: a text column and a label column (:func:`load_records`);
- causal-LM instruction tuning: instruction / context / response fields (:func:`load_instructions`).
"""
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


@dataclass(frozen=True)
class Instructions:
    instructions: tuple[str, ...]
    contexts: tuple[str, ...]  # "" where a record has none
    responses: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.instructions)


def read_rows(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows (dicts) and column names of a CSV (header row), a JSONL file, or a local `datasets` folder.

    A folder is read with ``datasets.load_from_disk`` (a ``save_to_disk`` folder, train split
    if it holds several) or else ``datasets.load_dataset(folder)`` over its local data files;
    nothing is downloaded.
    """
    path = Path(path)
    if path.is_dir():
        rows = _read_dataset_folder(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise LoraPlannerError("--data", "a readable CSV or JSONL file, or a local datasets folder", str(path),
                                   f"({exc.strerror}) Check the path.") from None
        except UnicodeDecodeError:
            raise LoraPlannerError("--data", "a UTF-8 text file", str(path), "Convert the file to UTF-8.") from None
        if path.suffix.lower() in (".jsonl", ".json"):
            rows = []
            for i, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise LoraPlannerError("--data", "one JSON object per line", f"{path.name} line {i + 1}", "Fix that line.") from None
                    if not isinstance(row, dict):
                        raise LoraPlannerError("--data", "one JSON object per line", f"{path.name} line {i + 1}", "Fix that line.")
                    rows.append(row)
        else:
            rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise LoraPlannerError("--data", "a dataset with at least one record", f"{path} (empty)", "Point --data at a non-empty file.")
    return rows, list(rows[0].keys())


def _read_dataset_folder(path: Path) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise LoraPlannerError("--data", "a CSV/JSONL file (a folder needs the `datasets` package)", str(path),
                               "pip install 'lora-planner[data]' or pass a file.") from None
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError):
        try:
            ds = datasets.load_dataset(str(path))
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a folder it cannot read
            raise LoraPlannerError("--data", "a local datasets folder (save_to_disk, or CSV/JSON/Parquet files)", str(path),
                                   f"({type(exc).__name__}) Check the folder.") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return ds.to_list()


def _columns(path, columns: list[str], wanted: tuple[tuple[str, str], ...]) -> None:
    for field, col in wanted:
        if col not in columns:
            raise LoraPlannerError(field, f"a column of {Path(path).name}", col, nearest(col, columns))


def load_records(path: str | Path, text_column: str = "text", label_column: str = "label",
                 num_labels: int | None = None) -> Records:
    """Sequence-classification records; labels are mapped to 0..C-1 in sorted order.

    Raises:
        LoraPlannerError: missing file or column (the existing columns are listed), an empty file,
        or more distinct labels than ``num_labels``.
    """
    rows, columns = read_rows(path)
    _columns(path, columns, (("--text-column", text_column), ("--label-column", label_column)))
    names = tuple(sorted({str(r[label_column]) for r in rows}))
    if num_labels is not None and len(names) > num_labels:
        raise LoraPlannerError("num_labels", f"at least the {len(names)} distinct labels of {Path(path).name}", num_labels,
                               f"Use --num-labels {len(names)}.")
    index = {n: i for i, n in enumerate(names)}
    return Records(tuple(str(r[text_column]) for r in rows), tuple(index[str(r[label_column])] for r in rows), names, str(path))


def load_instructions(path: str | Path, instruction_column: str = "instruction", context_column: str | None = "context",
                      response_column: str = "response") -> Instructions:
    """Instruction-tuning records (Dolly style). ``context_column`` may be absent from the data or None.

    Raises:
        LoraPlannerError: missing file or column (the existing columns are listed) or an empty file.
    """
    rows, columns = read_rows(path)
    _columns(path, columns, (("--instruction-column", instruction_column), ("--response-column", response_column)))
    ctx = context_column if context_column in columns else None
    return Instructions(tuple(str(r[instruction_column]) for r in rows),
                        tuple(str(r[ctx] or "") if ctx else "" for r in rows),
                        tuple(str(r[response_column]) for r in rows), str(path))
