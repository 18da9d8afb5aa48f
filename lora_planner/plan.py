"""plan_fleet: a profile and a fleet in, one LoRA configuration per client out (DESIGN §3, §9)."""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .adapter_config import to_adapter_config
from .errors import LoraPlannerError
from .fleet import ClientSpec
from .memory import evaluate, predict_phases
from .profile import ModelProfile, write_json_atomic
from .units import format_size

PLAN_SCHEMA_VERSION = 1
DEFAULT_RANKS = (2, 4, 8, 16, 32, 64)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Entry:
    layer: int
    module: str
    rank: int
    alpha: float


@dataclass(frozen=True)
class ClientPlan:
    id: str
    budget_bytes: int
    reserve_bytes: int
    predicted_tensor_bytes: int
    predicted_bytes: int
    objective: float
    entries: tuple[Entry, ...]
    solver: str
    status: str  # "planned" | "dropped"
    extras: dict = field(default_factory=dict)  # depth-rank: round_time_s, bytes_up, bytes_down, ...

    @property
    def assignment(self) -> dict[tuple[int, str], int]:
        return {(e.layer, e.module): e.rank for e in self.entries}


@dataclass(frozen=True)
class Plan:
    profile: str
    profile_checksum: str
    batch_size: int
    seq_len: int
    solver: str
    target_modules: tuple[str, ...]
    ranks: tuple[int, ...]
    clients: tuple[ClientPlan, ...]
    seconds: float = 0.0
    importance: str = "uniform"  # which layer value the plan maximised: the profile's method, a prior, or "custom"

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        return {"schema_version": PLAN_SCHEMA_VERSION, **body}

    def client(self, cid: str) -> ClientPlan:
        for c in self.clients:
            if c.id == cid:
                return c
        raise LoraPlannerError("client id", "one of the plan's clients", cid, f"Known: {', '.join(c.id for c in self.clients)}.")

    def lora_config(self, profile: ModelProfile, cid: str):
        """The client's ``peft.LoraConfig`` (imports peft only now)."""
        from .adapter_config import to_lora_config

        return to_lora_config(self.adapter_config(profile, cid))

    def adapter_config(self, profile: ModelProfile, cid: str) -> dict:
        c = self.client(cid)
        return to_adapter_config(profile, c.assignment, alphas={(e.layer, e.module): e.alpha for e in c.entries})

    def write(self, outdir: str | Path, profile: ModelProfile) -> None:
        """OUTDIR/plan.json and OUTDIR/<client-id>/adapter_config.json (each written atomically)."""
        outdir = Path(outdir)
        configs = {c.id: self.adapter_config(profile, c.id) for c in self.clients if c.status == "planned"}
        for cid, cfg in configs.items():
            write_json_atomic(outdir / cid / "adapter_config.json", cfg)
        write_json_atomic(outdir / "plan.json", self.to_json())


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except OSError as exc:
        raise LoraPlannerError("PLAN", "a readable plan.json", str(path), f"({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise LoraPlannerError("PLAN", "valid JSON", f"{path} (line {exc.lineno})", "Regenerate it with `lora-planner solve -o`.") from None
    if not isinstance(body, dict) or body.get("schema_version") != PLAN_SCHEMA_VERSION:
        raise LoraPlannerError("PLAN: schema_version", str(PLAN_SCHEMA_VERSION), body.get("schema_version") if isinstance(body, dict) else body,
                               "Regenerate it with this version's `lora-planner solve -o`.")
    try:
        clients = tuple(ClientPlan(**{**c, "entries": tuple(Entry(**e) for e in c["entries"])}) for c in body["clients"])
        return Plan(**{**{k: v for k, v in body.items() if k != "schema_version"}, "clients": clients,
                       "target_modules": tuple(body["target_modules"]), "ranks": tuple(body["ranks"])})
    except (KeyError, TypeError) as exc:
        raise LoraPlannerError("PLAN", "a well-formed plan.json", f"{path} ({exc})", "Regenerate it.") from None


def resolve_importance(profile: ModelProfile, targets: Sequence[str], importance) -> tuple:
    """(the [layers, targets] values the solvers maximise, the name recorded in the plan)."""
    from .importance.scores import depth_prior, normalise, uniform
    from .value import stored_importance

    if importance is None or (isinstance(importance, str) and importance == "profile"):
        stored = stored_importance(profile, tuple(targets))
        if stored is None:
            return uniform(profile.num_layers, len(targets)), "uniform"
        return normalise(stored), profile.importance.get("method", "stored")
    if isinstance(importance, str):
        priors = {"uniform": uniform, "depth-prior": depth_prior}
        if importance not in priors:
            raise LoraPlannerError("--importance", f"one of profile, {', '.join(priors)}", importance,
                                   "Scores that need a model and data are computed by `lora-planner profile --importance`.")
        return priors[importance](profile.num_layers, len(targets)), importance
    values = np.asarray(importance, dtype=float)
    if values.shape != (profile.num_layers, len(targets)):
        raise LoraPlannerError("importance", f"an array of shape (layers, targets) = {(profile.num_layers, len(targets))}",
                               values.shape, "Give one value per layer and target module.")
    return values, "custom"


def minimum_budget(problem, reserve_bytes: int = 0) -> int:
    """The least budget at which this integer problem has a plan: one target at the smallest rank in the top block."""
    top = problem.num_layers - 1
    r = min(problem.ranks)
    return min(int(problem.cost({(top, m): r}).max()) for m in problem.targets) * problem.unit + reserve_bytes


def plan_fleet(profile: ModelProfile, clients: Sequence[ClientSpec], solver: str = "knapsack",
               target_modules: Sequence[str] | None = None, ranks: Sequence[int] = DEFAULT_RANKS,
               batch_size: int | None = None, seq_len: int | None = None, reserve_bytes: int = 0,
               drop_infeasible: bool = False, alpha_ratio: float = 2.0, unit_bytes: int | None = None,
               seed: int = 0, importance=None) -> Plan:
    """Plan every client of a fleet.

    Args:
        profile: the model's memory profile.
        clients: the fleet (ids unique; budgets in bytes).
        solver: a name from ``lora_planner.solvers.SOLVERS``.
        target_modules: candidate LoRA modules (default: the profile's, e.g. q and v).
        ranks: allowed ranks (a client's own ``ranks`` override them).
        reserve_bytes: runtime reserve subtracted from every budget (CUDA context, allocator).
        drop_infeasible: drop clients whose budget is below the minimum instead of failing.
        importance: layer values: None or "profile" (the profile's stored score, else uniform), a prior
            name ("uniform", "depth-prior"), or a [layers, targets] array.

    Raises:
        LoraPlannerError: on a bad fleet, solver or a budget below the minimum.
    """
    from .solvers import build_problem, get_solver

    t0 = time.perf_counter()
    entry = get_solver(solver)
    if not clients:
        raise LoraPlannerError("fleet", "at least one client", "an empty fleet", "Pass --memory-budget or --clients.")
    seen = set()
    for c in clients:
        if not SAFE_ID.match(c.id):
            raise LoraPlannerError("client id", "letters, digits, '.', '_' or '-' (it names a folder)", c.id, "Rename the client.")
        if c.id in seen:
            raise LoraPlannerError("client id", "unique", c.id, "Give every client its own id.")
        seen.add(c.id)
    batch = batch_size or profile.batch_size
    seq = seq_len or profile.seq_len
    targets = profile.resolve_targets(list(target_modules) if target_modules else None)
    ranks = tuple(sorted(set(int(r) for r in ranks)))
    if not ranks or min(ranks) <= 0:
        raise LoraPlannerError("--ranks", "positive whole numbers", ranks, "E.g. --ranks 2,4,8,16,32,64.")

    importance, importance_name = resolve_importance(profile, targets, importance)

    planned: dict[str, ClientPlan] = {}
    terms = evaluate(profile, batch, seq)
    seen_plans: dict[tuple, tuple[int, tuple[Entry, ...]]] = {}
    by_ranks: dict[tuple[int, ...], list[ClientSpec]] = {}
    for c in clients:
        by_ranks.setdefault(tuple(sorted(c.ranks or ranks)), []).append(c)
    for rset, group in by_ranks.items():
        problem = build_problem(profile, targets, rset, batch, seq, unit=unit_bytes,
                                max_budget_bytes=max(c.memory_bytes for c in group) - reserve_bytes, values=importance)
        need = minimum_budget(problem, reserve_bytes)
        feasible = []
        for c in group:
            if c.memory_bytes >= need:
                feasible.append(c)
                continue
            if not drop_infeasible:
                raise LoraPlannerError(
                    f"memory budget of {c.id}", f"at least {format_size(need)} for {profile.name} at batch {batch} x {seq} tokens"
                    + (f" with a {format_size(reserve_bytes)} reserve" if reserve_bytes else ""),
                    format_size(c.memory_bytes), "Raise the budget, lower --batch-size/--seq-len, or pass --drop-infeasible.")
            planned[c.id] = ClientPlan(c.id, c.memory_bytes, reserve_bytes, 0, 0, 0.0, (), solver, "dropped",
                                       {"reason": f"needs at least {format_size(need)}"})
        caps = [problem.capacity(c.memory_bytes - reserve_bytes) for c in feasible]
        sols = entry.solve(problem, caps, feasible, seq_len=seq, batch=batch, seed=seed)
        for c, sol in zip(feasible, sols):
            a = sol.assignment
            if not a:
                planned[c.id] = ClientPlan(c.id, c.memory_bytes, reserve_bytes, 0, 0, 0.0, (), sol.solver, "dropped",
                                           {"reason": f"{solver} found no configuration that fits"})
                continue
            key = tuple(sorted(a.items()))
            if key not in seen_plans:  # the optimum is a step function of budget: many clients share a plan
                seen_plans[key] = (max(predict_phases(profile, a, terms=terms).values()),
                                   tuple(Entry(l, m, r, alpha_ratio * r) for (l, m), r in key))
            tensor, entries = seen_plans[key]
            planned[c.id] = ClientPlan(c.id, c.memory_bytes, reserve_bytes, tensor, tensor + reserve_bytes, round(sol.objective, 9),
                                       entries, sol.solver, "planned", dict(sol.extras))
    return Plan(profile=profile.name, profile_checksum=profile.to_json()["checksum"], batch_size=batch, seq_len=seq,
                solver=solver, target_modules=targets, ranks=ranks, clients=tuple(planned[c.id] for c in clients),
                seconds=round(time.perf_counter() - t0, 4), importance=importance_name)
