"""What the executor costs beyond training, in one run, on all-MiniLM-L6-v2 and real BANKING77 text.

(a) One client's local steps through the executor (``training.client.run_client``: attach the
    adapter to the shared base, load its payload, THE training step, hand back the update) against
    a bare PEFT loop on the same base, adapter, batches and optimiser (the reference: get_peft_model,
    AdamW, ``model(**batch).loss.backward()``). Ratio = bare seconds / executor seconds (goal >= 0.95).
    Measured both without a peak measurement (rounds after a client's first) and with one (its first
    round: one of the steps runs under the live-bytes tracker).
(b) A whole federated run of 10 clients x 2 rounds (in-process backend): the share of each round
    spent on sending (planning the payloads), aggregation, re-planning and checkpointing, from the
    loop's own phase timers (goal <= 5 %).

    python bench/executor_overhead.py [--steps 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"


def bare_loop(base, data, cfg, order, seq_len, lr):
    """The reference: a plain PEFT loop, nothing of the executor but the tokeniser call."""
    import torch
    from peft import get_peft_model

    from lora_planner.adapter_config import to_lora_config

    torch.manual_seed(0)
    model = get_peft_model(base.model, to_lora_config(cfg))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for idx in order:
        batch = base.batch(data, idx, seq_len)
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()
    model.unload()


def part_a(args, rows, out):
    from lora_planner.aggregation.rules import ClientPayload
    from lora_planner.data import load_records
    from lora_planner.training.client import ClientTask, SharedBase, example_order, run_client
    from lora_planner.profile import shipped_profile
    from lora_planner.adapter_config import to_adapter_config

    data = load_records(DATA / "train.csv", "text", "category", 77)
    base = SharedBase("all-minilm-l6-v2", "seq-cls", 77)
    prof = shipped_profile("all-minilm-l6-v2")
    cfg = to_adapter_config(prof, {(l, m): 16 for l in range(6) for m in ("attention.self.query", "attention.self.value")})
    shard = tuple(range(0, 2000))
    order = example_order(shard, args.steps, args.batch_size, 0)
    task = ClientTask("c0", 1, 0, cfg, ClientPayload.empty(), shard, args.steps, args.batch_size, args.seq_len, 5e-4,
                      2**40, 0, measure_step=-1)
    run_client(base, data, task)  # warm-up: first-call costs out of the timings
    bare, ours, measured = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter(); bare_loop(base, data, cfg, order, args.seq_len, 5e-4); bare.append(time.perf_counter() - t)
        t = time.perf_counter(); run_client(base, data, task); ours.append(time.perf_counter() - t)
        t = time.perf_counter(); run_client(base, data, replace(task, measure_step=1)); measured.append(time.perf_counter() - t)
    b, o, m = statistics.median(bare), statistics.median(ours), statistics.median(measured)
    rows.append(["(a) local steps, executor", f"{args.steps} x {args.batch_size}x{args.seq_len}", f"{o:.2f} s", f"{b:.2f} s", f"{b / o:.3f}"])
    rows.append(["(a) ... with peak measured", "one step tracked", f"{m:.2f} s", f"{b:.2f} s", f"{b / m:.3f}"])
    out["a"] = {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "bare_s": bare,
                "executor_s": ours, "executor_measured_s": measured, "ratio": b / o, "ratio_measured": b / m}


def part_b(args, rows, out):
    import json

    from lora_planner.federated import RunSettings, start

    with tempfile.TemporaryDirectory() as tmp:
        s = RunSettings(model="all-minilm-l6-v2", task="seq-cls", num_labels=77, data=str(DATA / "train.csv"),
                        eval_data=str(DATA / "test.csv"), label_column="category", budgets=("100MiB:4", "115MiB:3", "140MiB:3"),
                        method=args.method, rounds=2, local_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                        eval_samples=500)
        run = start(s, Path(tmp) / "run")
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    per_round = []
    for r in lines:
        sec = r["seconds"]
        total = sum(sec.values())
        overhead = sec.get("send", 0) + sec["aggregate"] + sec["plan"] + sec["checkpoint"]
        per_round.append({"round": r["round"], "seconds": sec, "overhead_share": overhead / total})
        rows.append([f"(b) round {r['round']} overhead, {len(r['clients'])} clients", f"{args.method}",
                     f"{overhead:.2f} s", f"{total:.1f} s", f"{overhead / total:.2%}"])
    out["b"] = {"method": args.method, "rounds": per_round}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="fed-pilot")
    args = ap.parse_args()
    rows, out = [], {}
    part_a(args, rows, out)
    part_b(args, rows, out)
    print(table(rows, ["what", "setting", "ours / overhead", "reference / round", "ratio / share"]))
    print("wrote", write("executor_overhead", out))


if __name__ == "__main__":
    main()
