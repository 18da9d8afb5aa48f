"""Run settings of a federated job, the method presets, and their validation (no torch).

Every check runs before anything is written, and all of them run: the first failure is one line
naming the setting, the rule, the value and a fix (the CLI maps settings to flags).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import LoraPlannerError, nearest


@dataclass(frozen=True)
class Preset:
    """A method: which solver plans, which score values layers, which rule aggregates."""

    summary: str
    solver: str
    aggregation: str
    importance: str = "uniform"
    replan_every: int = 0


METHODS: dict[str, Preset] = {
    "fedit": Preset("FedIT: every client the same plan (all layers, the largest rank the smallest taking-part client holds); "
                    "FedAvg of A and B", "uniform", "fedit"),
    "hetlora": Preset("HetLoRA: all layers, per-client largest rank; zero-padding aggregation, truncation back", "hetlora", "hetlora"),
    "flora": Preset("FLoRA: per-client ranks as hetlora; stacking aggregation merged into every base", "hetlora", "flora"),
    "flexlora": Preset("FlexLoRA: per-client ranks; SVD of the exact sum, truncated to each client's rank", "hetlora", "flexlora"),
    "legend": Preset("LEGEND: output-side depth and a rising rank ramp under a common round deadline", "depth-rank", "hetlora",
                     "depth-prior"),
    "fed-pilot": Preset("Fed-piLot: exact knapsack over local-global IG-Scores; STAgg aggregation; re-planned", "knapsack",
                        "stagg", "ig", replan_every=5),
}

TASKS = ("seq-cls", "causal-lm")


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's result (hashed into run.json; a resume must match it but ``rounds``)."""

    model: str
    task: str
    data: str
    eval_data: str | None
    method: str = "fed-pilot"
    solver: str = ""
    aggregation: str = ""
    importance: str = ""
    num_labels: int = 2
    text_column: str = "text"
    label_column: str = "label"
    instruction_column: str = "instruction"
    context_column: str = "context"
    response_column: str = "response"
    budgets: tuple[str, ...] = ()
    clients_file: str | None = None
    plan_dir: str | None = None
    profile: str | None = None
    partition: str = "dirichlet"  # "dirichlet" | "iid" | a partition JSON path
    dirichlet: float = 0.5
    rounds: int = 20
    local_steps: int = 10
    batch_size: int = 8
    seq_len: int = 32
    lr: float = 5e-4
    max_grad_norm: float | None = None
    dtype: str = "fp32"
    seed: int = 0
    fraction: float = 1.0
    min_clients: int = 1
    replan_every: int = -1  # -1: the method's default
    beta: float = 0.5
    ig_samples: int = 64
    eval_samples: int | None = None
    eval_batch_size: int = 64
    target_modules: tuple[str, ...] = ()
    ranks: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    backend: str = "inprocess"
    device: str = "cpu"
    round_timeout: float = 600.0  # seconds a round waits for replies (flower); a dead node costs this much
    num_supernodes: int = 0  # flower simulation: nodes to start (0: one per fleet client)
    measure: str = "new"  # measure a client's peak when its config is new ("new"), every round ("every"), or "never"
    gradient_checkpointing: bool = False  # every client trains with it on (training.levers); the profile is traced so
    quantization: str | None = None  # "nf4" | "int8": every client trains on this bitsandbytes base (training.levers)

    def resolved(self) -> "RunSettings":
        """The method's defaults filled in where the overrides are empty."""
        if self.method not in METHODS:
            raise LoraPlannerError("method", "a known method", self.method, nearest(self.method, METHODS))
        p = METHODS[self.method]
        return replace(self, solver=self.solver or p.solver, aggregation=self.aggregation or p.aggregation,
                       importance=self.importance or p.importance,
                       replan_every=p.replan_every if self.replan_every < 0 else self.replan_every)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        """A hash of every setting but ``rounds`` (which a resume may raise)."""
        body = {k: v for k, v in self.to_json().items() if k != "rounds"}
        return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_json(cls, body: dict) -> "RunSettings":
        names = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in body.items() if k in names}
        return cls(**kwargs)


def check(s: RunSettings) -> None:
    """Refuse impossible settings, the first one as a one-line error."""
    from ..aggregation import AGGREGATORS
    from ..importance import SCORES
    from ..solvers import SOLVERS

    problems: list[LoraPlannerError] = []

    def positive_int(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(LoraPlannerError(name, "a positive whole number", value, f"E.g. {name} = 10."))

    def positive_number(name: str, value) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            problems.append(LoraPlannerError(name, "a positive finite number", value, "E.g. 5e-4."))

    for name in ("rounds", "local_steps", "batch_size", "seq_len", "min_clients", "num_labels", "eval_batch_size", "ig_samples"):
        positive_int(name, getattr(s, name))
    positive_number("lr", s.lr)
    positive_number("round_timeout", s.round_timeout)
    if s.max_grad_norm is not None:
        positive_number("max_grad_norm", s.max_grad_norm)
    if not (isinstance(s.fraction, (int, float)) and 0 < s.fraction <= 1):
        problems.append(LoraPlannerError("fraction", "in (0, 1]", s.fraction, "E.g. 0.5 selects half the clients each round."))
    if not 0 <= s.beta <= 1:
        problems.append(LoraPlannerError("beta", "between 0 and 1", s.beta, "E.g. 0.5."))
    if s.partition == "dirichlet" and not (math.isfinite(s.dirichlet) and s.dirichlet > 0):
        problems.append(LoraPlannerError("dirichlet", "a positive concentration", s.dirichlet, "E.g. 0.5."))
    if s.task not in TASKS:
        problems.append(LoraPlannerError("task", f"one of {', '.join(TASKS)}", s.task, "E.g. seq-cls."))
    if s.dtype not in ("fp32", "bf16", "fp16"):
        problems.append(LoraPlannerError("dtype", "one of fp32, bf16, fp16", s.dtype, "E.g. fp32."))
    if s.quantization is not None:
        if s.quantization not in ("nf4", "int8"):
            problems.append(LoraPlannerError("quantization", "one of nf4, int8", s.quantization, "E.g. --quantization nf4."))
        elif s.aggregation == "flora":
            problems.append(LoraPlannerError("aggregation", "one that keeps the base frozen with a quantised base (FLoRA "
                                             "folds each round's update into the base weights, which are 4-/8-bit here)",
                                             s.aggregation, "Use hetlora, stagg, flexlora or fedit, or drop --quantization."))
    if s.measure not in ("new", "every", "never"):
        problems.append(LoraPlannerError("measure", "one of new, every, never", s.measure, "E.g. new (each new config once)."))
    if s.eval_samples is not None:
        positive_int("eval_samples", s.eval_samples)
    for name, registry, value in (("solver", SOLVERS, s.solver), ("aggregation", AGGREGATORS, s.aggregation)):
        if value:
            try:
                registry.get(value)
            except LoraPlannerError as exc:
                problems.append(exc)
    values = ("profile", "ig", *(n for n, p in SCORES.items() if not (p.obj.needs_model or p.obj.needs_data)))
    if s.importance and s.importance not in values:
        problems.append(LoraPlannerError("importance", f"one of {', '.join(values)}", s.importance, nearest(s.importance, values)))
    sources = [x for x in (bool(s.budgets), bool(s.clients_file), bool(s.plan_dir)) if x]
    if len(sources) != 1:
        problems.append(LoraPlannerError("clients", "given one way: memory budgets, a fleet file or a plan folder",
                                         f"{len(sources)} ways", "Pass one of --memory-budget, --clients, --plan."))
    if problems:
        raise problems[0]
