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
from .memory import check_shape, evaluate, predict_phases
from .atomic import write_json_atomic
from .profile import ModelProfile
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

    @classmethod
    def planned(cls, client: ClientSpec, *, reserve_bytes: int, tensor_bytes: int, objective: float,
                entries: tuple[Entry, ...], solver: str, extras: dict | None = None) -> "ClientPlan":
        return cls(id=client.id, budget_bytes=client.memory_bytes, reserve_bytes=reserve_bytes,
                   predicted_tensor_bytes=tensor_bytes, predicted_bytes=tensor_bytes + reserve_bytes,
                   objective=round(objective, 9), entries=entries, solver=solver, status="planned", extras=dict(extras or {}))

    @classmethod
    def dropped(cls, client: ClientSpec, *, reserve_bytes: int, solver: str, reason: str) -> "ClientPlan":
        return cls(id=client.id, budget_bytes=client.memory_bytes, reserve_bytes=reserve_bytes, predicted_tensor_bytes=0,
                   predicted_bytes=0, objective=0.0, entries=(), solver=solver, status="dropped", extras={"reason": reason})


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
    gradient_checkpointing: bool = False  # the profile's lever: every client trains with checkpointing on
    quantization: str | None = None  # the profile's quantised base ("nf4", "int8"): every client trains on it

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
    return plan_from_json(body, str(path))


def plan_from_json(body: Any, source: str = "plan") -> Plan:
    """A Plan from its parsed JSON (``Plan.to_json``); one-line errors for another schema or a broken body."""
    if not isinstance(body, dict) or body.get("schema_version") != PLAN_SCHEMA_VERSION:
        raise LoraPlannerError("PLAN: schema_version", str(PLAN_SCHEMA_VERSION), body.get("schema_version") if isinstance(body, dict) else body,
                               "Regenerate it with this version's `lora-planner solve -o`.")
    try:
        clients = tuple(ClientPlan(**{**c, "entries": tuple(Entry(**e) for e in c["entries"])}) for c in body["clients"])
        return Plan(**{**{k: v for k, v in body.items() if k != "schema_version"}, "clients": clients,
                       "target_modules": tuple(body["target_modules"]), "ranks": tuple(body["ranks"])})
    except (KeyError, TypeError) as exc:
        raise LoraPlannerError("PLAN", "a well-formed plan.json", f"{source} ({exc})", "Regenerate it.") from None


def resolve_importance(profile: ModelProfile, targets: Sequence[str], importance) -> tuple:
    """(the [layers, targets] values the solvers maximise, the name recorded in the plan)."""
    from .importance.scores import normalise, uniform
    from .value import stored_importance

    if importance is None or (isinstance(importance, str) and importance == "profile"):
        stored = stored_importance(profile, tuple(targets))
        if stored is None:
            return uniform(profile.num_layers, len(targets)), "uniform"
        return normalise(stored), profile.importance.get("method", "stored")
    if isinstance(importance, str):
        from .importance import SCORES, ScoreRequest

        priors = [n for n, p in SCORES.items() if not (p.obj.needs_model or p.obj.needs_data)]
        if importance not in priors:
            raise LoraPlannerError("importance", f"one of profile, {', '.join(priors)}", importance,
                                   "Scores that need a model and data are computed by `lora-planner profile --importance`.")
        mat, _ = SCORES.get(importance).obj.compute(ScoreRequest(profile.name, tuple(targets), profile.num_layers))
        return mat, importance
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


def check_fleet(clients: Sequence[ClientSpec]) -> None:
    """A fleet has at least one client, and ids that are unique and safe as folder names."""
    if not clients:
        raise LoraPlannerError("clients", "at least one client", "an empty fleet", "Pass --memory-budget or --clients.")
    seen = set()
    for c in clients:
        if not SAFE_ID.match(c.id):
            raise LoraPlannerError("client id", "letters, digits, '.', '_' or '-' (it names a folder)", c.id, "Rename the client.")
        if c.id in seen:
            raise LoraPlannerError("client id", "unique", c.id, "Give every client its own id.")
        seen.add(c.id)


@dataclass(frozen=True)
class _Setting:
    """What every rank class of one plan_fleet call shares."""

    profile: ModelProfile
    solver: str
    targets: tuple[str, ...]
    batch: int
    seq: int
    reserve_bytes: int
    drop_infeasible: bool
    alpha_ratio: float
    unit_bytes: int | None
    seed: int
    importance: Any
    terms: Any
    time_limit: float


def _plan_rank_class(s: _Setting, ranks: tuple[int, ...], group: Sequence[ClientSpec], memo: dict) -> dict[str, ClientPlan]:
    """Plan the clients that share one set of allowed ranks (one integer problem)."""
    from .solvers import build_problem, get_solver

    problem = build_problem(s.profile, s.targets, ranks, s.batch, s.seq, unit=s.unit_bytes,
                            max_budget_bytes=max(c.memory_bytes for c in group) - s.reserve_bytes, values=s.importance)
    need = minimum_budget(problem, s.reserve_bytes)
    out: dict[str, ClientPlan] = {}
    feasible = []
    for c in group:
        if c.memory_bytes >= need:
            feasible.append(c)
            continue
        if not s.drop_infeasible:
            raise LoraPlannerError(
                f"memory budget of {c.id}", f"at least {format_size(need)} for {s.profile.name} at batch {s.batch} x {s.seq} tokens"
                + (f" with a {format_size(s.reserve_bytes)} reserve" if s.reserve_bytes else ""),
                format_size(c.memory_bytes), "Raise the budget, lower --batch-size/--seq-len, or pass --drop-infeasible.")
        out[c.id] = ClientPlan.dropped(c, reserve_bytes=s.reserve_bytes, solver=s.solver, reason=f"needs at least {format_size(need)}")
    caps = [problem.capacity(c.memory_bytes - s.reserve_bytes) for c in feasible]
    sols = get_solver(s.solver).solve(problem, caps, feasible, seq_len=s.seq, batch=s.batch, seed=s.seed,
                                      time_limit=s.time_limit)
    for c, sol in zip(feasible, sols):
        out[c.id] = _client_result(s, c, sol, memo)
    return out


def _client_result(s: _Setting, client: ClientSpec, sol, memo: dict) -> ClientPlan:
    """One solver answer as a ClientPlan, with the memory model's prediction of its peak."""
    a = sol.assignment
    if not a:
        return ClientPlan.dropped(client, reserve_bytes=s.reserve_bytes, solver=sol.solver,
                                  reason=f"{s.solver} found no configuration that fits")
    key = tuple(sorted(a.items()))
    if key not in memo:  # the optimum is a step function of budget: many clients share a plan
        memo[key] = (max(predict_phases(s.profile, a, terms=s.terms).values()),
                     tuple(Entry(l, m, r, s.alpha_ratio * r) for (l, m), r in key))
    tensor, entries = memo[key]
    extras = {**sol.extras, "solver_status": sol.status} if sol.status == "feasible" else dict(sol.extras)
    extras["gradient_checkpointing"] = s.profile.checkpointed
    if s.profile.quantization:
        extras["quantization"] = s.profile.quantization
    return ClientPlan.planned(client, reserve_bytes=s.reserve_bytes, tensor_bytes=tensor, objective=sol.objective,
                              entries=entries, solver=sol.solver, extras=extras)


def plan_fleet(profile: ModelProfile, clients: Sequence[ClientSpec], solver: str = "knapsack",
               target_modules: Sequence[str] | None = None, ranks: Sequence[int] = DEFAULT_RANKS,
               batch_size: int | None = None, seq_len: int | None = None, reserve_bytes: int = 0,
               drop_infeasible: bool = False, alpha_ratio: float = 2.0, unit_bytes: int | None = None,
               seed: int = 0, importance=None, time_limit: float = 60.0) -> Plan:
    """Plan every client of a fleet.

    Args:
        profile: the model's memory profile.
        clients: the fleet (ids unique; budgets in bytes).
        solver: a name from ``lora_planner.solvers.SOLVERS``.
        target_modules: candidate LoRA modules (default: the profile's, e.g. q and v).
        ranks: allowed ranks (a client's own ``ranks`` override them).
        batch_size, seq_len: the training shape (None: the profile's; 0 or less is refused).
        reserve_bytes: runtime reserve subtracted from every budget (CUDA context, allocator).
        drop_infeasible: drop clients whose budget is below the minimum instead of failing.
        importance: layer values: None or "profile" (the profile's stored score, else uniform), a prior
            name ("uniform", "depth-prior"), or a [layers, targets] array.
        time_limit: seconds per client for the reference solvers (cpsat, milp); a client they stop
            is planned with their best plan so far and ``extras["solver_status"] = "feasible"``.

    Raises:
        LoraPlannerError: on a bad fleet, solver, shape or a budget below the minimum.
    """
    from .solvers import get_solver

    t0 = time.perf_counter()
    get_solver(solver)  # an unknown or uninstalled solver fails before any work
    check_fleet(clients)
    batch = profile.batch_size if batch_size is None else batch_size
    seq = profile.seq_len if seq_len is None else seq_len
    check_shape(profile, batch, seq)
    targets = profile.resolve_targets(list(target_modules) if target_modules else None)
    ranks = tuple(sorted(set(int(r) for r in ranks)))
    if not ranks or min(ranks) <= 0:
        raise LoraPlannerError("ranks", "positive whole numbers", ranks, "E.g. --ranks 2,4,8,16,32,64.")
    values, importance_name = resolve_importance(profile, targets, importance)
    if not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise LoraPlannerError("time_limit", "a positive number of seconds", time_limit, "E.g. 60.")
    setting = _Setting(profile, solver, targets, batch, seq, reserve_bytes, drop_infeasible, alpha_ratio, unit_bytes, seed,
                       values, evaluate(profile, batch, seq), float(time_limit))
    by_ranks: dict[tuple[int, ...], list[ClientSpec]] = {}
    for c in clients:
        by_ranks.setdefault(tuple(sorted(c.ranks or ranks)), []).append(c)
    planned: dict[str, ClientPlan] = {}
    memo: dict = {}
    for rset, group in by_ranks.items():
        planned.update(_plan_rank_class(setting, rset, group, memo))
    return Plan(profile=profile.name, profile_checksum=profile.to_json()["checksum"], batch_size=batch, seq_len=seq,
                solver=solver, target_modules=targets, ranks=ranks, clients=tuple(planned[c.id] for c in clients),
                seconds=round(time.perf_counter() - t0, 4), importance=importance_name,
                gradient_checkpointing=profile.checkpointed, quantization=profile.quantization)


def plan_fleet_auto(plain: ModelProfile, checkpointed: ModelProfile, clients: Sequence[ClientSpec],
                    drop_infeasible: bool = False, **kwargs) -> Plan:
    """Gradient checkpointing where it fits more value: each client is planned under both profiles (the
    same model, traced with the lever off and on) and keeps the plan of higher value; a tie keeps it off
    (checkpointing costs one more forward of the blocks). Each client's ``extras["gradient_checkpointing"]``
    records the choice, and the executor applies it per client."""
    import dataclasses

    if (not checkpointed.checkpointed or plain.checkpointed or plain.name != checkpointed.name
            or plain.quantization != checkpointed.quantization):
        raise LoraPlannerError("--gradient-checkpointing auto", "one model's profiles with the lever off and on",
                               f"{plain.name} / {checkpointed.name}", "Use shipped --model profiles (see `profile --list`).")
    off = plan_fleet(plain, clients, drop_infeasible=True, **kwargs)
    on = plan_fleet(checkpointed, clients, drop_infeasible=drop_infeasible, **kwargs)
    chosen = []
    for a, b in zip(off.clients, on.clients):
        take_on = b.status == "planned" and (a.status != "planned" or b.objective > a.objective + 1e-12)
        chosen.append(b if take_on else a)
    return dataclasses.replace(off, clients=tuple(chosen), seconds=round(off.seconds + on.seconds, 4))
