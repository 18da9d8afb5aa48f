"""`lora-planner partition`: split a labelled data set among federated clients."""
from __future__ import annotations

import argparse
import sys

from ..errors import LoraPlannerError
from .common import positive_int, table

EXAMPLES = """examples:
  lora-planner partition --data ../shared/data/banking77/train.csv --label-column category --clients 10 --dirichlet 0.5 -o parts.json
  lora-planner partition --data ../shared/data/dolly15k/databricks-dolly-15k.jsonl --text-column instruction \\
      --label-column category --clients 8 --by-column 2 -o dolly_parts.json --plot dolly_parts.png
  lora-planner partition --data train.csv --clients 20 --iid -o iid.json"""


def register(sub) -> None:
    p = sub.add_parser("partition", help="split labelled data among clients (iid, dirichlet, by column, size skew)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CSV (with a header) or JSONL file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label", help="label or category column")
    p.add_argument("--clients", type=positive_int("--clients"), required=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--dirichlet", type=float, metavar="ALPHA", help="non-IID labels ~ Dirichlet(ALPHA) per client (default 0.5)")
    how.add_argument("--by-column", type=int, metavar="K", help="each client holds K of the categories")
    how.add_argument("--size-skew", type=float, metavar="SIGMA", help="IID labels, client sizes ~ lognormal(0, SIGMA)")
    how.add_argument("--iid", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PNG", help="also draw clients x labels")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data import load_records, partition

    recs = load_records(args.data, args.text_column, args.label_column)
    if args.iid:
        part = partition(recs.labels, args.clients, "iid", seed=args.seed, source=recs.source)
    elif args.by_column is not None:
        part = partition(recs.labels, args.clients, "by-column", per_client=args.by_column, seed=args.seed, source=recs.source)
    elif args.size_skew is not None:
        part = partition(recs.labels, args.clients, "size-skew", skew=args.size_skew, seed=args.seed, source=recs.source)
    else:
        alpha = 0.5 if args.dirichlet is None else args.dirichlet
        part = partition(recs.labels, args.clients, "dirichlet", alpha=alpha, seed=args.seed, source=recs.source)
    counts = part.label_counts(recs.labels, len(recs.label_names))
    rows = []
    for cid, row in zip(part.clients, counts):
        top = row.argsort()[::-1][:3]
        share = ", ".join(f"{recs.label_names[i]} {row[i] / row.sum():.0%}" for i in top if row[i])
        rows.append([cid, str(int(row.sum())), str(int((row > 0).sum())), share])
    print(table(rows, ["client", "records", "labels held", "largest labels"]))
    if args.plot:
        _plot(counts, list(part.clients), args.plot)
    part.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _plot(counts, names, path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise LoraPlannerError("--plot", "matplotlib installed", "missing", "pip install -c constraints.txt -e '.[plot]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.3 * len(names) + 2))
    im = ax.imshow(counts, aspect="auto", cmap="magma_r", interpolation="nearest")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("label index")
    ax.set_title("records per client and label")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
