"""Benchmark helpers: a table on stdout, JSON in bench/results/."""
from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write(name: str, payload: dict) -> Path:
    from lora_planner.atomic import write_json_atomic

    path = RESULTS / f"{name}.json"
    write_json_atomic(path, {"machine": machine(), **payload})
    return path


def table(rows: list[list], header: list[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def random_update(module_names, rank: int, width: int, num_examples: int, generator, a_scale: float, b_scale: float):
    """A PEFT-shaped ClientUpdate with random factors: A (rank x width), B (width x rank), alpha = 2 * rank."""
    import torch

    from lora_planner.aggregation import ClientUpdate

    sd = {}
    for name in module_names:
        sd[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, width, generator=generator) * a_scale
        sd[f"base_model.model.{name}.lora_B.weight"] = torch.randn(width, rank, generator=generator) * b_scale
    return ClientUpdate(sd, {"r": rank, "lora_alpha": 2 * rank, "target_modules": list(module_names)}, num_examples)
