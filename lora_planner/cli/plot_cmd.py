"""`lora-planner plot`: a plan as a picture (clients x layers ranks; predicted memory vs budget)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import write_file_atomic
from ..errors import LoraPlannerError

EXAMPLES = """examples:
  lora-planner plot plans/plan.json -o plan.png            # a plan: ranks per layer, memory vs budget
  lora-planner plot runs/b77 -o curves.png                 # a run: eval accuracy/loss vs round and vs bytes,
  lora-planner plot runs/b77 runs/b77-hetlora -o cmp.png   #   predicted vs measured peak per client (several runs on one figure)"""


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a plan (rank heatmap, memory) or runs (learning curves, memory)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", metavar="PLAN_OR_RUN", nargs="+", help="a plan.json written by `lora-planner solve -o`, or run folders of `train`")
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    p.set_defaults(run=run)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise LoraPlannerError("plot", "matplotlib installed", "missing", "pip install -c constraints.txt -e '.[plot]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    import matplotlib.pyplot as plt

    try:
        write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=Path(path).suffix or ".png")
    finally:
        plt.close(fig)


def read_run(folder: str | Path) -> list[dict]:
    import json

    path = Path(folder) / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        raise LoraPlannerError("RUN", "a run folder of `lora-planner train` with metrics.jsonl", str(folder),
                               "Point at the folder given to train -o.") from None


def plot_runs(folders, path: str | Path) -> None:
    """Eval accuracy (or loss) against round and against total bytes sent; predicted vs measured peak per client."""
    plt = _pyplot()
    runs = [(Path(f).name, read_run(f)) for f in folders]
    key = "accuracy" if all("accuracy" in r["eval"] for _, rows in runs for r in rows) else "loss"
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.6))
    for name, rows in runs:
        rounds = [r["round"] for r in rows]
        values = [r["eval"][key] for r in rows]
        sent, total = [], 0
        for r in rows:
            total += sum((c.get("bytes_up") or 0) + (c.get("bytes_down") or 0) for c in r["clients"])
            sent.append(total / 2**20)
        a1.plot(rounds, values, marker="o", ms=3, label=name)
        a2.plot(sent, values, marker="o", ms=3, label=name)
        peaks = {}
        for r in rows:
            for c in r["clients"]:
                if c.get("measured_peak_bytes"):
                    peaks[c["id"]] = (c["predicted_bytes"] / 2**20, c["measured_peak_bytes"] / 2**20, c["budget_bytes"] / 2**20)
        if peaks:
            pred, meas, _ = zip(*peaks.values())
            a3.scatter(pred, meas, s=18, label=name)
    lo_hi = a3.get_xlim()
    a3.plot(lo_hi, lo_hi, color="#999999", lw=0.8, ls="--", label="measured = predicted")
    a1.set(xlabel="round", ylabel=f"eval {key}", title=f"eval {key} per round")
    a2.set(xlabel="MiB sent (up + down, all clients)", ylabel=f"eval {key}", title=f"eval {key} vs communication")
    a3.set(xlabel="predicted peak (MiB)", ylabel="measured peak (MiB)", title="memory per client: predicted vs measured")
    for a in (a1, a2, a3):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_plan(plan, path: str | Path) -> None:
    plt = _pyplot()
    import numpy as np

    clients = list(plan.clients)
    layers = 1 + max((e.layer for c in clients for e in c.entries), default=0)
    grid = np.full((len(clients), layers), np.nan)
    for i, c in enumerate(clients):
        for e in c.entries:
            grid[i, e.layer] = np.nanmax([grid[i, e.layer], e.rank])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.35 * len(clients) + 2.5), gridspec_kw={"width_ratios": [3, 1.3]})
    im = ax1.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", vmin=min(plan.ranks), vmax=max(plan.ranks))
    ax1.set_xlabel("layer (input → output)")
    ax1.set_yticks(range(len(clients)), [c.id for c in clients])
    ax1.set_title(f"LoRA rank per layer ({plan.solver}; blank = no adapter)")
    fig.colorbar(im, ax=ax1, label="max rank in layer")
    y = np.arange(len(clients))
    gib = 2**30
    ax2.barh(y, [c.budget_bytes / gib for c in clients], color="#dddddd", label="budget")
    ax2.barh(y, [c.predicted_bytes / gib for c in clients], height=0.5, color="#3b75af", label="predicted peak")
    ax2.set_yticks(y, [""] * len(clients))
    ax2.invert_yaxis()
    ax1.set_ylim(len(clients) - 0.5, -0.5)
    ax2.set_xlabel("GiB")
    ax2.set_title("predicted memory vs budget")
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def run(args) -> int:
    from ..plan import load_plan

    targets = args.plan
    if all(Path(t).is_dir() and (Path(t) / "metrics.jsonl").exists() for t in targets):
        plot_runs(targets, args.output)
    elif len(targets) == 1:
        plot_plan(load_plan(targets[0]), args.output)
    else:
        raise LoraPlannerError("PLAN_OR_RUN", "one plan.json, or run folders only", " ".join(targets), "Plot plans one at a time.")
    return 0
