"""ClientSpec and fleet input: --memory-budget lists or a fleet CSV/JSON file."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import LoraPlannerError
from .units import parse_size

FLEET_COLUMNS = ("id", "memory", "throughput", "bandwidth", "examples", "ranks")


@dataclass(frozen=True)
class ClientSpec:
    """One client of the federation.

    Attributes:
        memory_bytes: the client's accelerator memory budget.
        throughput_flops: sustained training FLOP/s (for round-time estimates).
        bandwidth_bytes: link bytes/s, used for both uplink and downlink.
        num_examples: local training examples per round (the fleet file's ``examples`` column).
        ranks: allowed LoRA ranks (None = the planner's --ranks).
    """

    id: str
    memory_bytes: int
    throughput_flops: float = 50e12
    bandwidth_bytes: float = 12.5e6  # 100 Mbit/s
    num_examples: int = 1000
    ranks: tuple[int, ...] | None = None


def parse_ranks(text, field_name: str = "--ranks") -> tuple[int, ...]:
    items = text if isinstance(text, (list, tuple)) else [t for t in str(text).replace(";", ",").replace(" ", ",").split(",") if t]
    out = []
    for t in items:
        try:
            r = int(t)
        except (TypeError, ValueError):
            r = 0
        if r <= 0:
            raise LoraPlannerError(field_name, "a list of positive whole numbers", text, "E.g. --ranks 2,4,8,16,32,64.")
        out.append(r)
    if not out:
        raise LoraPlannerError(field_name, "a non-empty list of ranks", text, "E.g. --ranks 2,4,8,16,32,64.")
    return tuple(sorted(set(out)))


def budgets_to_clients(budgets: list[str]) -> list[ClientSpec]:
    """`--memory-budget 8GiB --memory-budget 24GiB`, `8GiB,24GiB` or `8GiB:10,24GiB:2` (counts)."""
    clients: list[ClientSpec] = []
    for arg in budgets:
        for item in [t.strip() for t in str(arg).split(",") if t.strip()]:
            size, _, count = item.partition(":")
            n = 1
            if count:
                try:
                    n = int(count)
                except ValueError:
                    n = 0
                if n <= 0:
                    raise LoraPlannerError("--memory-budget", "SIZE or SIZE:COUNT with a positive count", item, "E.g. 12GiB:10.")
            b = parse_size(size, "--memory-budget")
            clients += [ClientSpec(id=f"client-{len(clients) + i}", memory_bytes=b) for i in range(n)]
    if not clients:
        raise LoraPlannerError("--memory-budget", "at least one size", "nothing", "E.g. --memory-budget 16GiB.")
    return clients


def _number(value, field_name: str, row: str, size: bool = False) -> float:
    if size and isinstance(value, str) and not value.replace(".", "", 1).replace("e", "", 1).replace("+", "").isdigit():
        return float(parse_size(value, f"{row}: {field_name}"))
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x <= 0:
        raise LoraPlannerError(f"{row}: {field_name}", "a positive number", value, "Fix that cell of the fleet file.")
    return x


def read_fleet(path: str | Path) -> list[ClientSpec]:
    """Read a fleet CSV or JSON (a list of objects) with columns id, memory[, throughput, bandwidth, examples, ranks]."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LoraPlannerError("--clients", "a readable CSV or JSON file", str(path), f"({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoraPlannerError("--clients", "valid JSON", f"{path} (broken at line {exc.lineno})", "Fix the file.") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise LoraPlannerError("--clients", "a JSON list of objects", path.name, 'E.g. [{"id": "a", "memory": "16GiB"}].')
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise LoraPlannerError("--clients", "a fleet with at least one client", f"{path} (empty)", "Add rows: id,memory.")
    clients, seen = [], set()
    for i, row in enumerate(rows):
        where = f"{path.name} row {i + 1}"
        extra = set(row) - set(FLEET_COLUMNS)
        if extra:
            raise LoraPlannerError(f"{where}: columns", f"among {', '.join(FLEET_COLUMNS)}", ", ".join(sorted(map(str, extra))),
                                   "Rename or remove those columns.")
        for col in ("id", "memory"):
            if row.get(col) in (None, ""):
                raise LoraPlannerError(f"{where}: {col}", "present", "missing", f"Every client needs {col}.")
        cid = str(row["id"])
        if cid in seen:
            raise LoraPlannerError(f"{where}: id", "unique", cid, "Give every client its own id.")
        seen.add(cid)
        kw = {}
        if row.get("throughput") not in (None, ""):
            kw["throughput_flops"] = _number(row["throughput"], "throughput", where)
        if row.get("bandwidth") not in (None, ""):
            kw["bandwidth_bytes"] = _number(row["bandwidth"], "bandwidth", where, size=True)
        if row.get("examples") not in (None, ""):
            kw["num_examples"] = int(_number(row["examples"], "examples", where))
        if row.get("ranks") not in (None, ""):
            kw["ranks"] = parse_ranks(row["ranks"], f"{where}: ranks")
        clients.append(ClientSpec(id=cid, memory_bytes=parse_size(row["memory"], f"{where}: memory"), **kw))
    return clients
