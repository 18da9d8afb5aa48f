"""Does the IG-Score predict which layers are worth training? (issue 4 evidence)

For each layer l of all-minilm-l6-v2 (or each (layer, module) with --granularity entry): train
LoRA (r=8) on that alone, plus the new classification head, for a fixed number of AdamW steps on
the same batches, and measure the drop of the held-out loss. Usefulness = that drop minus the
drop of the head trained alone (the reference in the same run). Then Spearman's rho between each
score's ranking and the usefulness ranking. Also: the IG-Score's stability across two seeds
(rank correlation) and its time, and, with --clients K, how the local scores of clients split by
label (by-column partition: each client holds a few categories) differ from one another.

    python bench/importance_validity.py --dataset banking77                 # 77 intents
    python bench/importance_validity.py --dataset dolly --clients 4        # 8 categories of the instruction text
    python bench/importance_validity.py --dataset banking77 --granularity entry
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from lora_planner import shipped_profile
from lora_planner.data import load_records, partition
from lora_planner.importance import compute_importance, depth_prior, from_values, spearman, uniform

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"banking77": (DATA / "banking77" / "train.csv", "text", "category"),
            "dolly": (DATA / "dolly15k" / "databricks-dolly-15k.jsonl", "instruction", "category")}
MODEL = "all-minilm-l6-v2"


def train_drop(recs, entries, train_idx, eval_batches, args, num_labels) -> float:
    """Held-out loss before minus after ``args.steps`` AdamW steps with LoRA on ``entries`` (head always trained)."""
    import torch
    from peft import get_peft_model

    from lora_planner.data.tokenize import tokenized_batches
    from lora_planner.importance.measure import load_model
    from lora_planner.profiling.build import lora_config_for

    net, tok, _ = load_model(MODEL, "seq-cls", num_labels, seed=args.train_seed)
    if entries:
        model = get_peft_model(net, lora_config_for("bert.encoder.layer", {e: 8 for e in entries}, "seq-cls"))
    else:  # the reference: the head alone
        model = net
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier")
    batches = tokenized_batches(tok, recs, batch_size=args.batch, max_length=args.max_length, samples=args.steps * args.batch,
                                seed=args.train_seed + 100, indices=train_idx)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(np.mean([model(**b).loss.item() for b in eval_batches(tok)]))
    before = eval_loss()
    model.train()
    for b in batches:
        opt.zero_grad(set_to_none=True)
        model(**b).loss.backward()
        opt.step()
    return before - eval_loss()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=list(DATASETS), default="banking77")
    ap.add_argument("--granularity", choices=["layer", "entry"], default="layer")
    ap.add_argument("--samples", type=int, default=256, help="IG sample size")
    ap.add_argument("--steps", type=int, default=40, help="training steps per single-layer run")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--eval", type=int, default=256, help="held-out records for the loss")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--clients", type=int, default=0, help="also score K clients split by label (by-column, 2 each)")
    args = ap.parse_args()

    path, text_col, label_col = DATASETS[args.dataset]
    recs = load_records(path, text_col, label_col)
    num_labels = len(recs.label_names)
    profile = shipped_profile(MODEL)  # its blocks and LoRA-able modules
    modules, layers = profile.module_names, profile.num_layers
    rng = np.random.default_rng(0)
    order = rng.permutation(len(recs))
    eval_idx, train_idx = order[:args.eval].tolist(), order[args.eval:].tolist()

    def eval_batches(tok):
        from lora_planner.data.tokenize import tokenized_batches

        return tokenized_batches(tok, recs, batch_size=64, max_length=args.max_length, indices=eval_idx, seed=0)

    # ---- the scores, two seeds, timed ----
    ig, times = {}, {}
    for seed in (0, 1):
        t = time.perf_counter()
        imp = compute_importance("ig", MODEL, modules, layers, task="seq-cls", num_labels=num_labels, data=recs,
                                 samples=args.samples, seed=seed, batch_size=8, max_length=args.max_length, indices=train_idx)
        times[seed] = time.perf_counter() - t
        ig[seed] = from_values(imp["values"], modules)
    wn = from_values(compute_importance("weight-norm", MODEL, modules, layers)["values"], modules)
    scores = {"ig": ig[0], "uniform": uniform(layers, len(modules)), "depth-prior": depth_prior(layers, len(modules)),
              "weight-norm": wn}
    stab_entry, stab_layer = spearman(ig[0], ig[1]), spearman(ig[0].sum(1), ig[1].sum(1))
    print(f"IG-Score on {args.dataset} ({args.samples} samples, batch 8, {args.max_length} tokens): "
          f"{times[0]:.1f} s and {times[1]:.1f} s; seed 0 vs 1 Spearman: entries {stab_entry:.3f}, layers {stab_layer:.3f}")
    print(table([[str(l)] + [f"{100 * x:.1f}" for x in ig[0][l]] + [f"{100 * ig[0][l].sum():.1f}"] for l in range(layers)],
                ["layer"] + [".".join(m.split(".")[-2:]) for m in modules] + ["layer %"]))

    # ---- usefulness: train one layer (or entry) alone ----
    units = [[(l, m) for m in modules] for l in range(layers)] if args.granularity == "layer" else \
        [[(l, m)] for l in range(layers) for m in modules]
    t = time.perf_counter()
    base = train_drop(recs, [], train_idx, eval_batches, args, num_labels)
    drops = []
    for k, unit in enumerate(units):
        drops.append(train_drop(recs, unit, train_idx, eval_batches, args, num_labels) - base)
        print(f"  {k + 1}/{len(units)} {unit[0][0]}{'' if args.granularity == 'layer' else ' ' + unit[0][1]}: "
              f"extra loss drop {drops[-1]:+.4f}", flush=True)
    train_s = time.perf_counter() - t

    def unit_score(mat):
        return mat.sum(1) if args.granularity == "layer" else mat.ravel()
    rows, rho = [], {}
    for name, mat in scores.items():
        rho[name] = spearman(unit_score(mat), drops)
        rows.append([name, "n/a (all tied)" if np.isnan(rho[name]) else f"{rho[name]:+.3f}"])
    print(f"\nhead alone: held-out loss drop {base:.4f} in {args.steps} steps; {len(units)} single-{args.granularity} runs in {train_s:.0f} s")
    print(table([[str(i), f"{d:+.4f}", f"{100 * unit_score(ig[0])[i]:.1f}"] for i, d in enumerate(drops)],
                [args.granularity, "extra loss drop", "IG %"]))
    print(table(rows, ["score", f"Spearman vs measured ({args.dataset}, {args.granularity})"]))

    clients = {}
    if args.clients:
        part = partition([recs.labels[i] for i in train_idx], args.clients, "by-column", per_client=2, seed=0)
        local = {}
        for cid, idx in part.clients.items():
            held = [train_idx[i] for i in idx]
            imp = compute_importance("ig", MODEL, modules, layers, task="seq-cls", num_labels=num_labels, data=recs,
                                     samples=min(args.samples, len(held)), seed=0, batch_size=8, max_length=args.max_length,
                                     indices=held)
            local[cid] = from_values(imp["values"], modules)
            cats = sorted({recs.label_names[recs.labels[i]] for i in held})
            clients[cid] = {"categories": cats, "records": len(held), "spearman_vs_pooled": spearman(local[cid], ig[0]),
                            "spearman_vs_usefulness": spearman(unit_score(local[cid]), drops)}
        ids = list(local)
        pair = [spearman(local[a], local[b]) for i, a in enumerate(ids) for b in ids[i + 1:]]
        print(table([[c, ", ".join(v["categories"]), v["records"], f"{v['spearman_vs_pooled']:+.3f}", f"{v['spearman_vs_usefulness']:+.3f}"]
                     for c, v in clients.items()], ["client", "categories", "records", "rho vs pooled IG", "rho vs usefulness"]))
        print(f"clients' local scores, pairwise Spearman: min {min(pair):+.3f}, median {float(np.median(pair)):+.3f}")
        clients["pairwise_spearman"] = pair
    name = f"importance_validity_{args.dataset}" + ("" if args.granularity == "layer" else "_entry")
    print("wrote", write(name, {"args": vars(args), "modules": modules, "ig_seconds": times, "ig_seed0": ig[0].tolist(),
                                "ig_seed1": ig[1].tolist(), "stability_spearman": {"entries": stab_entry, "layers": stab_layer},
                                "head_only_drop": base, "extra_drops": drops, "spearman": rho, "train_seconds": train_s,
                                "clients": clients}))


if __name__ == "__main__":
    main()
