"""The round loop: select → send each client its plan and slice → train → screen → aggregate →
re-score and re-plan → evaluate → checkpoint. One function, :func:`federated_rounds`; the rest of
this module prepares its state and writes the run folder.

Run folder: ``run.json`` (resolved settings and their hash), ``profile.json`` (the planning
profile), ``plan/`` (the first plan), ``metrics.jsonl`` (one row per round), ``checkpoints/``,
``final/`` (a PEFT folder of the global adapter, with ``labels.json``).
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..adapter_config import to_adapter_config
from ..aggregation import UpdateRejected, check_update, delta_weights, get_aggregator
from ..aggregation.rules import AggregationRule, ClientPayload, GlobalAdapter
from ..aggregation.updates import Factors, client_slice
from ..atomic import json_text, write_dir_atomic, write_file_atomic, write_json_atomic
from ..errors import LoraPlannerError
from ..plan import Plan, plan_from_json
from ..profile import load_profile
from ..training.client import ClientResult, ClientTask
from . import checkpoint as ckpt
from .backends import BACKENDS, Backend, ScoreTask
from .job import Job, check_profile, make_plan, prepare, training_profile
from .settings import RunSettings

Progress = Callable[[str, int], Callable[[], None]]


@dataclass
class Run:
    """The state of a run between rounds (all of it is in the checkpoint)."""

    job: Job
    backend: Backend
    aggregator: AggregationRule
    plan: Plan
    run_dir: Path
    result: GlobalAdapter | None = None
    rows: list = field(default_factory=list)
    max_rank: dict = field(default_factory=dict)  # full module name -> largest rank any plan gave it
    local_scores: dict | None = None  # client id -> [layers, targets] (Fed-piLot)
    global_score: np.ndarray | None = None
    measured: dict = field(default_factory=dict)  # "client/config digest" -> [peak bytes, round measured]

    @property
    def settings(self) -> RunSettings:
        return self.job.settings


class Timer(dict):
    @contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        yield
        self[phase] = round(self.get(phase, 0.0) + time.perf_counter() - t, 4)


def task_seed(seed: int, rnd: int, index: int) -> int:
    return ((seed * 1_000_003 + rnd) * 1009 + index) % 2**31


def select(plan: Plan, fraction: float, seed: int, rnd: int) -> list:
    """This round's clients among those the plan lets take part (seeded; fleet order kept)."""
    able = [c for c in plan.clients if c.status == "planned"]
    k = max(1, round(fraction * len(able)))
    chosen = set(random.Random(f"{seed}/{rnd}").sample(range(len(able)), k)) if k < len(able) else set(range(len(able)))
    return [c for i, c in enumerate(able) if i in chosen]


def config_key(client_id: str, cfg: dict) -> str:
    return client_id + "/" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def client_task(run: Run, client, rnd: int, index: int) -> ClientTask:
    """Its LoraConfig from the plan and its slice of the global adapter."""
    s = run.settings
    cfg = run.plan.adapter_config(run.job.profile, client.id)
    seed = task_seed(s.seed, rnd, index)
    payload = run.aggregator.for_client(run.result, cfg, seed) if run.result is not None else ClientPayload.empty()
    measure = s.measure == "every" or (s.measure == "new" and config_key(client.id, cfg) not in run.measured)
    return ClientTask(client.id, rnd, seed, cfg, payload, run.job.shards[client.id], s.local_steps, s.batch_size, s.seq_len,
                      s.lr, client.budget_bytes, client.predicted_bytes, s.max_grad_norm, measure_step=1 if measure else -1,
                      gradient_checkpointing=bool(client.extras.get("gradient_checkpointing", run.plan.gradient_checkpointing)))


def screen(run: Run, tasks: list[ClientTask], results: list[ClientResult]) -> tuple[list, list[dict]]:
    """The updates that may be aggregated, and one metrics object per client (dropped ones with the reason).

    A peak measured in an earlier round for the same client and config stands for this round's (the
    step is deterministic in its shapes); ``measured_round`` says when it was taken."""
    updates, rows = [], []
    for t, r in zip(tasks, results):
        key = config_key(t.client_id, t.adapter_config)
        if r.measured_peak_bytes is not None:
            run.measured[key] = [r.measured_peak_bytes, t.round]
        peak, measured_round = run.measured.get(key, [None, None])
        reason = r.error
        if reason is None and peak is not None and peak > t.budget_bytes:
            reason = f"measured peak {peak} bytes over its budget of {t.budget_bytes}"
        if reason is None:
            try:
                check_update(r.update)
                odd = [k for k in r.update.state_dict if "lora_" in k and not k.endswith((".lora_A.weight", ".lora_B.weight"))]
                if odd:
                    raise UpdateRejected(f"{t.client_id}: {odd[0]}", "a LoRA A or B factor of its plan", "another key", "Drop it.")
            except UpdateRejected as exc:
                reason = f"rejected: {exc}"
        if reason is None:
            updates.append(r.update)
        rows.append({"id": t.client_id, "simulated_seconds": simulated_seconds(run, t, r), "budget_bytes": t.budget_bytes,
                     "predicted_bytes": t.predicted_bytes,
                     "measured_peak_bytes": peak, "measured_round": measured_round, "bytes_up": r.bytes_up, "bytes_down": r.bytes_down,
                     "train_loss": r.train_loss, "num_examples": len(t.indices), "dropped": reason, "seconds": round(r.seconds, 3)})
    return updates, rows


def simulated_seconds(run: Run, task: ClientTask, result: ClientResult) -> float:
    """This client's round on its own device (fleet throughput and bandwidth): the depth-rank time model."""
    from ..timing import client_seconds, depth_of

    spec = next(c for c in run.job.fleet if c.id == task.client_id)
    layers = [e.layer for e in run.plan.client(task.client_id).entries]
    tokens = task.local_steps * task.batch_size * task.seq_len
    return round(client_seconds(run.job.profile, depth_of(run.job.profile, layers), tokens, spec.throughput_flops,
                                spec.bandwidth_bytes, result.bytes_down, result.bytes_up), 6)


def global_view(run: Run) -> tuple[dict, ClientPayload]:
    """The global adapter as one config and payload: every module any client trains, at its global rank, plus the head."""
    prof = run.job.profile
    where = {prof.full_name(l, m): (l, m) for l in range(prof.num_layers) for m in prof.module_names}
    assignment = {where[n]: min(f.rank, run.max_rank.get(n, f.rank)) for n, f in run.result.modules.items() if n in where}
    for n, r in run.max_rank.items():
        assignment.setdefault(where[n], r)
    cfg = to_adapter_config(prof, assignment)
    return cfg, run.aggregator.for_client(run.result, cfg, 0)


def rescore_and_replan(run: Run, rnd: int) -> list[str]:
    """Fed-piLot: the global score from this round's aggregate; every K rounds Γ = β·local + (1−β)·global re-plans."""
    from ..importance import combine, global_update, update_norms

    s, prof = run.settings, run.job.profile
    if run.local_scores is None:
        return []
    norms = update_norms(delta_weights(run.result), prof.layer_prefix, run.plan.target_modules, prof.num_layers)
    run.global_score = global_update(norms, run.global_score)
    if not s.replan_every or rnd % s.replan_every or rnd >= s.rounds:
        return []
    scores = {cid: combine(local, run.global_score, s.beta) for cid, local in run.local_scores.items()}
    new = make_plan(run.job, scores)
    changed = [c.id for c, old in zip(new.clients, run.plan.clients) if c.entries != old.entries]
    run.plan = new
    note_ranks(run)
    return changed


def note_ranks(run: Run) -> None:
    for c in run.plan.clients:
        for e in c.entries:
            name = run.job.profile.full_name(e.layer, e.module)
            run.max_rank[name] = max(run.max_rank.get(name, 0), e.rank)


def federated_rounds(run: Run, first: int, progress: Progress | None = None) -> None:
    """Rounds ``first``..``settings.rounds``; each ends with a checkpoint the run can resume from."""
    s = run.settings
    tick_round = progress("rounds", s.rounds - first + 1) if progress else None
    for rnd in range(first, s.rounds + 1):
        t = Timer()
        with t("send"):
            chosen = select(run.plan, s.fraction, s.seed, rnd)
            tasks = [client_task(run, c, rnd, i) for i, c in enumerate(chosen)]
        with t("train"):
            results = run.backend.train(tasks, progress(f"round {rnd}: clients", len(tasks)) if progress else None)
        updates, clients = screen(run, tasks, results)
        if len(updates) < s.min_clients:
            why = "; ".join(f"{c['id']}: {c['dropped']}" for c in clients if c["dropped"])[:400]
            raise LoraPlannerError(f"round {rnd}", f"at least min_clients={s.min_clients} usable updates", len(updates),
                                   f"Dropped: {why}. Resume after fixing the clients, or lower --min-clients.")
        with t("aggregate"):
            run.result = run.aggregator.aggregate(updates)
        with t("plan"):
            replanned = rescore_and_replan(run, rnd)
        with t("evaluate"):
            evaluation = run.backend.evaluate(*global_view(run))
        clients += [{"id": c.id, "budget_bytes": c.budget_bytes, "dropped": f"plan: {c.extras.get('reason', 'no plan')}"}
                    for c in run.plan.clients if c.status != "planned"]
        trained = [c["simulated_seconds"] for c in clients if not c["dropped"]]
        run.rows.append({"round": rnd, "eval": evaluation, "seconds": dict(t), "round_time_s": max(trained), "clients": clients,
                         "aggregation": s.aggregation, "replanned": replanned})
        with t("checkpoint"):
            save(run, rnd)
        run.rows[-1]["seconds"] = dict(t)
        write_metrics(run)
        if tick_round:
            tick_round()
    write_final(run)


# ---- the run folder ------------------------------------------------------------------------

def server_state(run: Run) -> dict:
    return {"round": len(run.rows), "rows": run.rows, "plan": run.plan.to_json(), "max_rank": run.max_rank, "measured": run.measured,
            "backend": run.backend.state(),
            "local_scores": {k: v.tolist() for k, v in run.local_scores.items()} if run.local_scores is not None else None,
            "global_score": run.global_score.tolist() if run.global_score is not None else None}


def save(run: Run, rnd: int) -> None:
    ckpt.save_checkpoint(run.run_dir, rnd, run.aggregator, run.result, server_state(run))


def write_metrics(run: Run) -> None:
    text = "".join(json.dumps(r) + "\n" for r in run.rows)
    write_file_atomic(run.run_dir / "metrics.jsonl", lambda tmp: tmp.write_text(text))


def exact_factors(delta) -> Factors:
    """Factors whose product is ``delta`` (out x in) to float precision: its SVD at its numerical rank."""
    import torch

    u, sv, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    k = max(1, int((sv > sv[0] * 1e-7).sum())) if sv.numel() and sv[0] > 0 else 1
    root = sv[:k].sqrt()
    return Factors((root[:, None] * vh[:k]).float(), (u[:, :k] * root).float())


def write_final(run: Run) -> None:
    """``final/``: the global adapter as a PEFT folder; for merge rules, adapters equal to the base's summed ΔW."""
    cfg, payload = global_view(run)
    if payload.base_delta:
        prof = run.job.profile
        where = {prof.full_name(l, m): (l, m) for l in range(prof.num_layers) for m in prof.module_names}
        factors = {n: exact_factors(d) for n, d in sorted(payload.base_delta.items())}
        cfg = to_adapter_config(prof, {where[n]: f.rank for n, f in factors.items()})
        adapter = client_slice(factors, cfg)
        adapter.update({k: v for k, v in payload.adapter.items() if "lora_" not in k})
        payload = ClientPayload(adapter, {})

    def write(tmp: Path) -> None:
        run.backend.save_adapter(cfg, payload, tmp)
        (tmp / "labels.json").write_text(json_text({"task": run.settings.task, "label_names": run.job.label_names,
                                                    "model": run.settings.model}))

    write_dir_atomic(run.run_dir / "final", write)


# ---- start and resume ----------------------------------------------------------------------

def _backend(job: Job, faults: dict | None, options: dict | None) -> Backend:
    return BACKENDS.get(job.settings.backend).obj(job.settings, job.data, job.eval_data, job.eval_indices, faults=faults,
                                                  fleet_ids=[c.id for c in job.fleet], **(options or {}))


def local_scores(job: Job, backend: Backend, plan: Plan) -> dict[str, np.ndarray]:
    s = job.settings
    tasks = []
    for c in job.fleet:
        shard = job.shards[c.id]
        sample = tuple(random.Random(s.seed).sample(shard, min(s.ig_samples, len(shard))))
        tasks.append(ScoreTask(c.id, sample, plan.target_modules, 8, s.batch_size, s.seq_len))
    return dict(zip((c.id for c in job.fleet), backend.score(tasks)))


def start(settings: RunSettings, run_dir: str | Path, force: bool = False, progress: Progress | None = None,
          faults: dict | None = None, backend_options: dict | None = None) -> Path:
    """A new run: check everything, plan, then write the run folder and train.

    ``faults``: (client id, round) -> fault kind, injected by the backend (drills and tests).
    ``backend_options``: extra arguments of the backend's factory (the Flower Grid).
    """
    from ..importance import combine, initial_global

    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise LoraPlannerError("output", "a new or empty folder", str(run_dir), "Pass --resume to continue it, or --force to start over.")
    job = prepare(settings)
    if job.profile is None:
        job.profile = training_profile(job.settings, progress)
    check_profile(job)
    plan = make_plan(job)  # uniform or prior values; Fed-piLot re-plans below with each client's Γ
    if not any(c.status == "planned" for c in plan.clients):
        raise LoraPlannerError("memory budgets", "enough for at least one client", "none fits",
                               f"Raise the budgets; the plan says: {plan.clients[0].extras.get('reason', '')}.")
    backend = _backend(job, faults, backend_options)
    scores = None
    if job.settings.importance == "ig" and job.fixed_plan is None:
        scores = local_scores(job, backend, plan)
        glob = initial_global(list(scores.values()))
        plan = make_plan(job, {cid: combine(sc, glob, job.settings.beta) for cid, sc in scores.items()})
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "run.json", {"lora_planner": __version__, "settings": job.settings.to_json(),
                                             "digest": job.settings.digest()})
    job.profile.save(run_dir / "profile.json")
    plan.write(run_dir / "plan", job.profile)
    run = Run(job, backend, get_aggregator(job.settings.aggregation), plan, run_dir, local_scores=scores)
    note_ranks(run)
    try:
        federated_rounds(run, 1, progress)
    finally:
        backend.close()
    return run_dir


def stored_settings(run_dir: Path) -> RunSettings:
    try:
        body = json.loads((run_dir / "run.json").read_text())
        return RunSettings.from_json(body["settings"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LoraPlannerError("resume", "a run folder with a readable run.json", str(run_dir),
                               f"({type(exc).__name__}) Is this a folder written by `lora-planner train`?") from None


def resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, progress: Progress | None = None,
           faults: dict | None = None, backend_options: dict | None = None) -> Path:
    """Continue a run from its last complete checkpoint; only ``rounds`` may change (and only grow)."""
    run_dir = Path(run_dir)
    stored = stored_settings(run_dir)
    for key, value in (overrides or {}).items():
        if key != "rounds" and getattr(stored, key) != value:
            raise LoraPlannerError(key, f"the run's own setting to resume it ({getattr(stored, key)!r})", value,
                                   "Drop that flag, or start a new run in another folder.")
    done = ckpt.latest(run_dir)
    rounds = (overrides or {}).get("rounds", stored.rounds)
    if rounds < done:
        raise LoraPlannerError("rounds", f"at least the {done} rounds already done", rounds, f"Use --rounds {done} or more.")
    settings = RunSettings(**{**stored.__dict__, "rounds": rounds})
    job = prepare(settings, profile=load_profile(run_dir / "profile.json"))
    check_profile(job)
    backend = _backend(job, faults, backend_options)
    aggregator = get_aggregator(settings.aggregation)
    result, server = ckpt.load_checkpoint(run_dir, done, aggregator)
    run = Run(job, backend, aggregator, plan_from_json(server["plan"]), run_dir, result, server["rows"], server["max_rank"],
              {k: np.asarray(v) for k, v in server["local_scores"].items()} if server["local_scores"] is not None else None,
              np.asarray(server["global_score"]) if server["global_score"] is not None else None, server.get("measured", {}))
    if rounds != stored.rounds:
        write_json_atomic(run_dir / "run.json", {"lora_planner": __version__, "settings": settings.to_json(),
                                                 "digest": settings.digest()})
    write_metrics(run)
    try:
        federated_rounds(run, done + 1, progress)
    finally:
        backend.close()
    return run_dir
