"""Wall time of one federated job on three engines, in one run: in-process (the reference), Flower's
Simulation Engine (Ray, in this process) and a Deployment Engine (flower-superlink + flower-supernode
processes on loopback, `examples/flower/run_deployment.py`). 8 clients x 3 rounds, all-MiniLM-L6-v2,
BANKING77, hetlora on an 8-client fleet that all take part. Start-up (everything before the first
round) is reported apart; "steady rounds" are the rounds after the first, once Ray's actors (or the
SuperNodes) are up and the base model is loaded: the first round also loads the model in every Ray
actor and measures each client's step (``--measure new``). The round timeout is long (900 s) so that
no client of the oversubscribed deployment (8 SuperNodes, each starting a ClientApp process per
message, on this machine's cores) is dropped: the metrics are then comparable with in-process.

    python bench/flower_overhead.py [--clients 8] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"


def settings(args, **kw):
    from lora_planner.federated import RunSettings

    return RunSettings(model="all-minilm-l6-v2", task="seq-cls", num_labels=77, data=str(DATA / "train.csv"),
                       eval_data=str(DATA / "test.csv"), label_column="category", budgets=(f"{args.budget}:{args.clients}",),
                       method="hetlora", partition="iid", rounds=args.rounds, local_steps=args.local_steps, batch_size=8,
                       seq_len=32, lr=3e-3, eval_samples=300, **kw)


def evals(run: Path) -> list[dict]:
    return [json.loads(x)["eval"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def train_seconds(run: Path) -> tuple[float, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(sum(r["seconds"].values()) for r in rows), sum(r["seconds"]["train"] for r in rows)


def steady_seconds(rows: list[dict]) -> float:
    """Wall seconds of the rounds after the first."""
    return sum(sum(r["seconds"].values()) for r in rows[1:])


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def dropped(rows: list[dict]) -> int:
    """Client replies missing over the run (timeouts, errors)."""
    return sum(len(r["dropped"]) if "dropped" in r else sum(1 for c in r["clients"] if c.get("dropped")) for r in rows)


def main() -> None:
    from lora_planner.federated import start
    from lora_planner.flower.server_app import simulate

    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--budget", default="140MiB")
    ap.add_argument("--round-timeout", type=float, default=900.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flower_overhead-"))
    out, rows = {}, []

    t = time.perf_counter()
    run = start(settings(args), work / "inprocess")
    total = time.perf_counter() - t
    rounds_s, train_s = train_seconds(run)
    reference = evals(run)
    out["inprocess"] = {"wall_s": total, "rounds_s": rounds_s, "train_s": train_s, "eval": reference,
                        "steady_s": steady_seconds(rows_of(run)), "dropped": dropped(rows_of(run)),
                        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rows.append(["in-process", f"{total:.1f}", f"{rounds_s:.1f}", f"{total - rounds_s:.1f}", f"{out['inprocess']['steady_s']:.1f}", "1.00",
                 "0", f"{out['inprocess']['peak_rss_mib']:.0f} (this process)"])

    t = time.perf_counter()
    run = simulate(settings(args, backend="flower"), work / "simulation", num_supernodes=args.clients)
    total = time.perf_counter() - t
    rounds_s, train_s = train_seconds(run)
    startup = total - rounds_s
    steady = steady_seconds(rows_of(run))
    out["simulation"] = {"wall_s": total, "rounds_s": rounds_s, "train_s": train_s, "startup_s": startup, "eval": evals(run),
                         "steady_s": steady, "ratio_steady": steady / out["inprocess"]["steady_s"],
                         "ratio_rounds": rounds_s / out["inprocess"]["rounds_s"], "dropped": dropped(rows_of(run)),
                         "peak_rss_mib_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    rows.append(["Flower simulation (Ray)", f"{total:.1f}", f"{rounds_s:.1f}", f"{startup:.1f}", f"{steady:.1f}",
                 f"{out['simulation']['ratio_steady']:.2f}", str(out["simulation"]["dropped"]),
                 f"{out['simulation']['peak_rss_mib_children']:.0f} (largest Ray worker)"])

    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "flower" / "run_deployment.py"), "--nodes", str(args.clients),
                           "--rounds", str(args.rounds), "--method", "hetlora", "--budgets", f"{args.budget}:{args.clients}",
                           "--round-timeout", str(args.round_timeout), "--root", str(work / "deployment")], capture_output=True, text=True)
    total = time.perf_counter() - t
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    rounds_s = sum(sum(r["seconds"].values()) for r in report["rounds"])
    steady = steady_seconds(report["rounds"])
    out["deployment"] = {"wall_s": total, "rounds_s": rounds_s, "ok": report["ok"], "startup_s": total - rounds_s,
                         "eval": [r["eval"] for r in report["rounds"]], "steady_s": steady,
                         "ratio_steady": steady / out["inprocess"]["steady_s"], "dropped": dropped(report["rounds"]),
                         "ratio_rounds": rounds_s / out["inprocess"]["rounds_s"]}
    rows.append(["Flower deployment (loopback)", f"{total:.1f}", f"{rounds_s:.1f}", f"{total - rounds_s:.1f}", f"{steady:.1f}",
                 f"{out['deployment']['ratio_steady']:.2f}", str(out["deployment"]["dropped"]), "(separate processes)"])
    print(table(rows, ["engine", "wall s", "rounds s", "start-up s", "steady rounds s", "steady / in-process", "dropped",
                       "peak RSS MiB"]))
    for engine in ("simulation", "deployment"):  # the same metrics as in-process (float tolerance)?
        diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(reference, out[engine]["eval"])]
        same_acc = [a["accuracy"] == b["accuracy"] for a, b in zip(reference, out[engine]["eval"])]
        out[engine]["max_loss_diff"], out[engine]["same_accuracy"] = max(diffs), all(same_acc)
        print(f"{engine}: eval loss differs from in-process by at most {max(diffs):.2e}; accuracy equal every round: {all(same_acc)}")
    print("wrote", write("flower_overhead" + ("" if args.clients == 8 else f"_{args.clients}clients"), {"clients": args.clients, "rounds": args.rounds, "local_steps": args.local_steps,
                                             **out}))


if __name__ == "__main__":
    main()
