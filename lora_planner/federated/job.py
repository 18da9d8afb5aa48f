"""A federated job made ready: data, fleet, partition, profile and plans, all checked before any file is written."""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.load import Instructions, Records, load_instructions, load_records
from ..errors import LoraPlannerError
from ..fleet import ClientSpec, budgets_to_clients, read_fleet
from ..plan import Plan, load_plan, plan_fleet
from ..profile import ModelProfile, load_profile
from .settings import RunSettings, check


@dataclass
class Job:
    settings: RunSettings
    data: Records | Instructions
    eval_data: Records | Instructions
    eval_indices: tuple[int, ...] | None
    fleet: list[ClientSpec]
    shards: dict[str, tuple[int, ...]]
    fixed_plan: Plan | None
    profile: ModelProfile | None = None

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self.data.label_names if isinstance(self.data, Records) else None


def _as(field: str, fn, *args):
    """Run a loader whose errors name ``--data``, naming ``field`` instead (the eval set has its own flag)."""
    try:
        return fn(*args)
    except LoraPlannerError as exc:
        if exc.field == "--data":
            raise LoraPlannerError(field, exc.rule, exc.value, exc.fix) from None
        raise


def load_data(s: RunSettings) -> tuple[Records | Instructions, Records | Instructions]:
    """The training set and the evaluation set (labels in the training set's numbering)."""
    if s.task == "causal-lm":
        train = load_instructions(s.data, s.instruction_column, s.context_column, s.response_column)
        if not s.eval_data:
            raise LoraPlannerError("eval_data", "a held-out file", "none", "Pass --eval-data test.jsonl.")
        test = _as("eval_data", load_instructions, s.eval_data, s.instruction_column, s.context_column, s.response_column)
        return train, test
    train = load_records(s.data, s.text_column, s.label_column, num_labels=s.num_labels)
    if not s.eval_data:
        raise LoraPlannerError("eval_data", "a held-out file", "none", "Pass --eval-data test.csv.")
    test = _as("eval_data", load_records, s.eval_data, s.text_column, s.label_column)
    index = {n: i for i, n in enumerate(train.label_names)}
    missing = [n for n in test.label_names if n not in index]
    if missing:
        raise LoraPlannerError("eval_data", "labels that the training set has", f"'{missing[0]}' ({len(missing)} unseen)",
                               "Evaluate on the same label set, or add those examples to --data.")
    labels = tuple(index[test.label_names[l]] for l in test.labels)
    return train, Records(test.texts, labels, train.label_names, test.source)


def load_fleet(s: RunSettings) -> tuple[list[ClientSpec], Plan | None]:
    if s.plan_dir:
        path = Path(s.plan_dir)
        plan = load_plan(path / "plan.json" if path.is_dir() else path)
        return [ClientSpec(c.id, c.budget_bytes) for c in plan.clients], plan
    if s.clients_file:
        return read_fleet(s.clients_file), None
    return budgets_to_clients(list(s.budgets)), None


def split(s: RunSettings, data, fleet: Sequence[ClientSpec]) -> dict[str, tuple[int, ...]]:
    """Each client's record indices: Dirichlet over labels, IID, or a partition file whose clients are the fleet's."""
    from ..data.partition import load_partition, partition

    ids = [c.id for c in fleet]
    if s.partition in ("dirichlet", "iid"):
        if s.partition == "dirichlet" and not isinstance(data, Records):
            raise LoraPlannerError("partition", "iid or a partition file for causal-lm (Dirichlet splits labels)", "dirichlet",
                                   "Pass --iid or --partition parts.json.")
        labels = data.labels if isinstance(data, Records) else [0] * len(data)
        part = partition(labels, len(fleet), s.partition, alpha=s.dirichlet, seed=s.seed, source=s.data)
        return {cid: tuple(part.clients[f"client-{i}"]) for i, cid in enumerate(ids)}
    part = load_partition(s.partition)
    if set(part.clients) != set(ids):
        lacks, extra = sorted(set(ids) - set(part.clients)), sorted(set(part.clients) - set(ids))
        raise LoraPlannerError("partition", "one with exactly the fleet's clients",
                               f"lacking {', '.join(lacks) or 'none'} and with {', '.join(extra) or 'none'} not in the fleet",
                               f"Make it with `lora-planner partition --clients {len(ids)}` for these ids, or rename.")
    for cid, idx in part.clients.items():
        if not idx or min(idx) < 0 or max(idx) >= len(data):
            raise LoraPlannerError(f"partition: {cid}", f"indices in 0..{len(data) - 1}, at least one", f"{len(idx)} indices",
                                   "Make the partition from this --data.")
    return {cid: tuple(part.clients[cid]) for cid in ids}


def prepare(settings: RunSettings, profile: ModelProfile | None = None) -> Job:
    """Check settings, data, fleet and partition; nothing is written and no model is loaded."""
    s = settings.resolved()
    check(s)
    data, test = load_data(s)
    fleet, fixed = load_fleet(s)
    shards = split(s, data, fleet)
    fleet = [replace(c, num_examples=len(shards[c.id])) for c in fleet]
    eval_indices = None
    if s.eval_samples is not None and s.eval_samples < len(test):
        eval_indices = tuple(sorted(random.Random(s.seed).sample(range(len(test)), s.eval_samples)))
    if s.profile and profile is None:
        profile = load_profile(s.profile)
    return Job(s, data, test, eval_indices, fleet, shards, fixed, profile)


def training_profile(s: RunSettings, progress=None) -> ModelProfile:
    """The planning profile at the training shape (traced on meta tensors; no weights needed)."""
    from ..profiling import profile_model

    return profile_model(s.model, batch_size=s.batch_size, seq_len=s.seq_len, dtype=s.dtype, task=s.task,
                         num_labels=s.num_labels, validate=2, seed=s.seed, progress=progress,
                         gradient_checkpointing=s.gradient_checkpointing, quantization=s.quantization)


def check_profile(job: Job) -> None:
    p, s = job.profile, job.settings
    if p.task != s.task:
        raise LoraPlannerError("profile", f"a profile of the task {s.task}", p.task, "Profile the model with --task " + s.task)
    dtype = p.conditions.get("dtype")
    if dtype and dtype != s.dtype:
        raise LoraPlannerError("profile", f"a profile made at --dtype {s.dtype}", dtype, "Profile at the training dtype.")
    if p.checkpointed != s.gradient_checkpointing:
        want = "on" if s.gradient_checkpointing else "off"
        raise LoraPlannerError("profile", f"a profile made with gradient checkpointing {want}", "on" if p.checkpointed else "off",
                               "Profile with the lever as training uses it (`lora-planner profile --gradient-checkpointing`).")
    if p.quantization != s.quantization:
        raise LoraPlannerError("profile", f"a profile made on a {s.quantization or 'unquantised'} base", p.quantization or "unquantised",
                               "Profile with the lever as training uses it (`lora-planner profile --quantization ...`).")
    if job.fixed_plan is not None:
        from ..memory import check_assignment

        for c in job.fixed_plan.clients:
            try:
                check_assignment(p, c.assignment)
            except LoraPlannerError as exc:
                raise LoraPlannerError(f"plan: client {c.id}", f"modules of {p.name} ({exc.field} {exc.rule})", exc.value,
                                       "Plan for this model with `lora-planner solve`.") from None


def make_plan(job: Job, scores: dict[str, np.ndarray] | None = None) -> Plan:
    """Plan the fleet; with per-client scores (Fed-piLot's Γ), every client is planned against its own."""
    s, p = job.settings, job.profile
    if job.fixed_plan is not None:
        return job.fixed_plan
    common = dict(solver=s.solver, target_modules=list(s.target_modules) or None, ranks=s.ranks, batch_size=s.batch_size,
                  seq_len=s.seq_len, drop_infeasible=True, seed=s.seed)
    if scores is None:
        imp = None if s.importance in ("profile", "ig") else s.importance
        return plan_fleet(p, job.fleet, importance=imp, **common)
    parts = [plan_fleet(p, [c], importance=scores[c.id], **common) for c in job.fleet]
    first = parts[0]
    return replace(first, clients=tuple(x.clients[0] for x in parts), seconds=round(sum(x.seconds for x in parts), 4),
                   importance="ig (local-global, per client)")
