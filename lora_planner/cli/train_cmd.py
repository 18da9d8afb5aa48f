"""`lora-planner train`: plan every client, then run the federated rounds on real PEFT clients."""
from __future__ import annotations

import argparse

from ..errors import LoraPlannerError

EXAMPLES = """examples:
  lora-planner train --model all-minilm-l6-v2 --task seq-cls --num-labels 77 \\
      --data ../shared/data/banking77/train.csv --eval-data ../shared/data/banking77/test.csv \\
      --text-column text --label-column category --memory-budget 100MiB,110MiB,120MiB,200MiB \\
      --dirichlet 0.5 --method fed-pilot --rounds 20 --local-steps 10 --batch-size 8 --seq-len 32 --lr 5e-4 \\
      --dtype fp32 --seed 0 -o runs/b77
  lora-planner train --resume runs/b77 --rounds 30          # continue (after a crash, or for more rounds)
  lora-planner train ... --method hetlora --aggregation flora  # a preset with one part overridden
  lora-planner train ... --clients fleet.csv --partition parts.json --fraction 0.5 --min-clients 3
  lora-planner plot runs/b77 runs/b77-hetlora -o curves.png

methods (each overridable by --solver, --importance, --aggregation):
{methods}

run folder: run.json, profile.json, plan/, metrics.jsonl (one JSON row per round), checkpoints/round-NNNN/,
final/ (PeftModel.from_pretrained(base, "RUN/final") loads it; labels.json names the classes).
sizes: GiB/G = 2**30 bytes, GB = 10**9 bytes."""

# flags whose value goes to the RunSettings field of the same name (argparse parses the type)
FIELDS = ("model", "task", "num_labels", "data", "eval_data", "text_column", "label_column", "instruction_column",
          "context_column", "response_column", "method", "solver", "aggregation", "importance", "profile", "rounds",
          "local_steps", "batch_size", "seq_len", "lr", "max_grad_norm", "dtype", "seed", "fraction", "min_clients",
          "replan_every", "beta", "ig_samples", "eval_samples", "eval_batch_size", "backend", "device", "measure", "dirichlet",
          "num_supernodes", "round_timeout", "gradient_checkpointing", "quantization")


def register(sub) -> None:
    from ..federated import METHODS

    listing = "\n".join(f"  {name:10s} {p.summary}" for name, p in METHODS.items())
    p = sub.add_parser("train", help="run federated LoRA rounds on the planned clients", epilog=EXAMPLES.format(methods=listing),
                       formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="a local Hugging Face folder with weights and tokenizer, or all-minilm-l6-v2")
    g.add_argument("--task", choices=("seq-cls", "causal-lm"), help="default seq-cls")
    g.add_argument("--num-labels", type=int, help="classes (seq-cls)")
    g.add_argument("--data", help="training CSV / JSONL / local datasets folder")
    g.add_argument("--eval-data", help="held-out CSV / JSONL (labels among the training set's)")
    for flag, default in (("--text-column", "text"), ("--label-column", "label"), ("--instruction-column", "instruction"),
                          ("--context-column", "context"), ("--response-column", "response")):
        g.add_argument(flag, help=f"default {default}")
    g = p.add_argument_group("clients (one of)")
    g.add_argument("--memory-budget", action="append", metavar="SIZE[:COUNT]", help="client budgets, e.g. 100MiB,120MiB:3")
    g.add_argument("--clients", metavar="FILE", help="a fleet CSV or JSON (id,memory[,throughput,bandwidth,examples,ranks])")
    g.add_argument("--plan", metavar="DIR", help="a plan written by `lora-planner solve -o DIR` (used as it is)")
    g = p.add_argument_group("partition (one of; default --dirichlet 0.5)")
    g.add_argument("--dirichlet", type=float, metavar="ALPHA", help="Dirichlet(ALPHA) label skew")
    g.add_argument("--iid", action="store_true", help="IID split")
    g.add_argument("--partition", metavar="FILE", help="a partition JSON from `lora-planner partition` (ids = the fleet's)")
    g = p.add_argument_group("method")
    g.add_argument("--method", help="preset (default fed-pilot; see below)")
    g.add_argument("--solver", help="override the preset's solver (see `lora-planner solve --help`)")
    g.add_argument("--importance", help="override the layer value: ig, uniform, depth-prior, profile")
    g.add_argument("--aggregation", help="override the rule: fedit, hetlora, flora, stagg, flexlora")
    g.add_argument("--replan-every", type=int, metavar="K", help="re-plan every K rounds with the new IG-Score (0: never)")
    g.add_argument("--beta", type=float, help="Γ = β·local + (1−β)·global (default 0.5)")
    g.add_argument("--ig-samples", type=int, help="examples per client for its local IG-Score (default 64)")
    g.add_argument("--target-modules", help="candidate modules, comma-separated (default: the profile's)")
    g.add_argument("--ranks", help="allowed ranks (default 2,4,8,16,32,64)")
    g.add_argument("--profile", metavar="FILE", help="planning profile (default: traced at the training shape, cached in the run)")
    g = p.add_argument_group("training")
    g.add_argument("--rounds", type=int, help="default 20")
    g.add_argument("--local-steps", type=int, help="optimiser steps per client per round (default 10)")
    g.add_argument("--batch-size", type=int, help="default 8")
    g.add_argument("--seq-len", type=int, help="tokens per example, padded or cut (default 32)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 5e-4)")
    g.add_argument("--max-grad-norm", type=float, help="clip gradients (default: off)")
    g.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="frozen-weight dtype (default fp32)")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="train every client with gradient checkpointing on; plans from a profile traced with it on")
    g.add_argument("--quantization", choices=("nf4", "int8"),
                   help="train on a bitsandbytes base (QLoRA's nf4, or int8), loaded from the local folder and prepared "
                        "with peft.prepare_model_for_kbit_training; plans from a profile traced on it (needs bitsandbytes)")
    g.add_argument("--seed", type=int, help="default 0")
    g.add_argument("--fraction", type=float, help="share of clients selected each round (default 1)")
    g.add_argument("--min-clients", type=int, help="fail a round with fewer usable updates (default 1)")
    g.add_argument("--eval-samples", type=int, help="evaluate on this many held-out examples (default all)")
    g.add_argument("--eval-batch-size", type=int, help="default 64")
    g.add_argument("--measure", choices=("new", "every", "never"), help="measure client peaks for new configs (default), every round, never")
    g.add_argument("--backend", help="inprocess (default) or flower (Flower's Simulation Engine on Ray, in this process)")
    g.add_argument("--num-supernodes", type=int, help="flower: simulated nodes (default: one per client)")
    g.add_argument("--round-timeout", type=float, help="flower: seconds a round waits for replies (default 600)")
    g.add_argument("--device", help="cpu (default) or cuda")
    g = p.add_argument_group("run folder")
    g.add_argument("-o", "--output", metavar="DIR", help="the run folder")
    g.add_argument("--resume", metavar="DIR", help="continue this run from its last checkpoint (--rounds may grow)")
    g.add_argument("--force", action="store_true", help="overwrite a run folder that exists")
    p.set_defaults(run=run)


def settings_from(args) -> dict:
    from ..fleet import parse_ranks

    given = {k: getattr(args, k) for k in FIELDS if hasattr(args, k)}
    ways = [w for w in ("dirichlet", "iid", "partition") if hasattr(args, w)]
    if len(ways) > 1:
        raise LoraPlannerError("--dirichlet/--iid/--partition", "one of the three", " and ".join("--" + w for w in ways), "Pick one.")
    if hasattr(args, "iid"):
        given["partition"] = "iid"
    elif hasattr(args, "partition"):
        given["partition"] = args.partition
    if hasattr(args, "memory_budget"):
        given["budgets"] = tuple(args.memory_budget)
    if hasattr(args, "clients"):
        given["clients_file"] = args.clients
    if hasattr(args, "plan"):
        given["plan_dir"] = args.plan
    if hasattr(args, "target_modules"):
        given["target_modules"] = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    if hasattr(args, "ranks"):
        given["ranks"] = parse_ranks(args.ranks)
    return given


def run(args) -> int:
    import warnings
    from pathlib import Path

    from ..federated import RunSettings, resume, start
    from .common import progress_factory

    # harmless and repeated once per client: PEFT renaming the base path, transformers' deprecation notes
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

    given = settings_from(args)
    progress = progress_factory()
    if hasattr(args, "resume"):
        if hasattr(args, "output") or hasattr(args, "force"):
            raise LoraPlannerError("--resume", "given alone (the run folder is the one resumed)", "with -o/--force", "Drop -o/--force.")
        from ..federated.loop import stored_settings

        stored = stored_settings(Path(args.resume))
        if stored.backend == "flower":
            folder = _simulate(None, stored, args.resume, overrides=given)
        else:
            folder = resume(args.resume, given, progress=progress)
    else:
        missing = [f for f in ("model", "data", "eval_data") if f not in given] + ([] if hasattr(args, "output") else ["output"])
        if missing:
            raise LoraPlannerError("--" + missing[0].replace("_", "-"), "given", "nothing", "See `lora-planner train --help`.")
        given.setdefault("task", "seq-cls")
        settings = RunSettings(**given)
        if settings.backend == "flower":
            folder = _simulate(settings, settings, args.output, force=hasattr(args, "force"))
        else:
            folder = start(settings, args.output, force=hasattr(args, "force"), progress=progress)
    print(summary(folder))
    return 0


def _simulate(settings, known, run_dir, force: bool = False, overrides: dict | None = None):
    """The same run on Flower's Simulation Engine (Ray) in this process: one SuperNode per client by default."""
    from ..federated import BACKENDS
    from ..federated.job import load_fleet

    BACKENDS.get("flower")  # one line if flwr is not installed
    n = known.num_supernodes or len(load_fleet(known.resolved())[0])
    from ..flower.server_app import simulate

    return simulate(settings, run_dir, n, resume_run=settings is None, force=force, overrides=overrides)


def summary(folder) -> str:
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-1]
    ev = last["eval"]
    acc = f", accuracy {ev['accuracy']:.4f}" if "accuracy" in ev else ""
    took = sum(1 for c in last["clients"] if not c.get("dropped"))
    over = [c for r in rows for c in r["clients"] if c.get("measured_peak_bytes") and c["measured_peak_bytes"] > c["budget_bytes"]]
    return (f"{folder}: {len(rows)} rounds; last round: eval loss {ev['loss']:.4f}{acc}; {took}/{len(last['clients'])} clients "
            f"trained; {len(over)} measured peaks over budget; adapter in {folder}/final")
