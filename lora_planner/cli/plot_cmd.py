"""`lora-planner plot`: a plan as a picture (clients x layers ranks; predicted memory vs budget)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import write_file_atomic
from ..errors import LoraPlannerError

EXAMPLES = """examples:
  lora-planner plot plans/plan.json -o plan.png"""


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a plan: rank heatmap and memory against budget", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", metavar="PLAN", help="a plan.json written by `lora-planner solve -o`")
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    p.set_defaults(run=run)


def plot_plan(plan, path: str | Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise LoraPlannerError("plot", "matplotlib installed", "missing", "pip install -c constraints.txt -e '.[plot]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    try:
        write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=Path(path).suffix or ".png")
    finally:
        plt.close(fig)


def run(args) -> int:
    from ..plan import load_plan

    plot_plan(load_plan(args.plan), args.output)
    return 0
