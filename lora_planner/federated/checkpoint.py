"""Checkpoints: ``checkpoints/round-NNNN/`` as safetensors + JSON, written as a unit with checksums.

A checkpoint holds what the next round needs and nothing a seed can recompute: the aggregator's
state, the global adapter (factors, averaged head, the base's summed ΔW), the current plans and
scores, and the metrics rows so far. Every random draw of a round is seeded from (seed, round,
client), so a resumed run repeats the uninterrupted one to the byte.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from ..aggregation import load_state, save_state
from ..aggregation.rules import GlobalAdapter
from ..aggregation.updates import Factors
from ..atomic import read_dir_verified, write_dir_atomic
from ..errors import LoraPlannerError

NAME = re.compile(r"^round-(\d{4,})$")
KEEP = 3  # checkpoints kept (older ones are removed once a newer one is complete)


def checkpoint_dir(run_dir: Path, rnd: int) -> Path:
    return run_dir / "checkpoints" / f"round-{rnd:04d}"


def _tensors(result: GlobalAdapter) -> dict[str, Any]:
    out = {}
    for name, f in result.modules.items():
        out[f"module/{name}.A"] = f.A.contiguous()
        out[f"module/{name}.B"] = f.B.contiguous()
    out.update({f"extra/{k}": v.contiguous() for k, v in result.extras.items()})
    out.update({f"delta/{k}": v.contiguous() for k, v in result.base_delta.items()})
    return out


def save_checkpoint(run_dir: Path, rnd: int, aggregator, result: GlobalAdapter, server: dict) -> Path:
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_state(aggregator, tmp / "aggregator")
        tensors = _tensors(result)
        if tensors:
            save_file(tensors, str(tmp / "global.safetensors"))
        meta = {"rule": result.rule, "round": result.round, "info": result.info}
        (tmp / "server.json").write_text(json.dumps({"global": meta, **server}, indent=1))

    path = checkpoint_dir(run_dir, rnd)
    write_dir_atomic(path, write, meta={"round": rnd})
    for old in sorted(completed(run_dir))[:-KEEP]:
        shutil.rmtree(checkpoint_dir(run_dir, old), ignore_errors=True)
    return path


def completed(run_dir: Path) -> list[int]:
    """Rounds with a complete checkpoint folder (a torn one has no manifest and is not counted)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := NAME.match(p.name)) and (p / "manifest.json").exists())


def load_checkpoint(run_dir: Path, rnd: int, aggregator) -> tuple[GlobalAdapter, dict]:
    """(the global adapter, the server's JSON) of round ``rnd``; the aggregator's state is loaded in place."""
    from safetensors.torch import load_file

    path = checkpoint_dir(run_dir, rnd)
    read_dir_verified(path, "checkpoint")
    load_state(aggregator, path / "aggregator")
    server = json.loads((path / "server.json").read_text())
    blob = path / "global.safetensors"
    tensors = load_file(str(blob)) if blob.exists() else {}
    modules: dict[str, Factors] = {}
    extras, delta = {}, {}
    for key, t in tensors.items():
        kind, _, name = key.partition("/")
        if kind == "module":
            base, part = name.rsplit(".", 1)
            modules.setdefault(base, {})[part] = t
        elif kind == "extra":
            extras[name] = t
        elif kind == "delta":
            delta[name] = t
    g = server.pop("global")
    factors = {n: Factors(ab["A"], ab["B"]) for n, ab in sorted(modules.items())}
    return GlobalAdapter(g["rule"], factors, g["round"], g.get("info", {}), extras, delta), server


def latest(run_dir: Path) -> int:
    done = completed(run_dir)
    if not done:
        raise LoraPlannerError("resume", "a run folder with a complete checkpoint", str(run_dir),
                               "Start the run again without --resume (add --force to overwrite the folder).")
    return done[-1]
