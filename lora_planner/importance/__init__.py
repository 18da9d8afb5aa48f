"""Layer importance: the IG-Score of Fed-piLot (DESIGN §5) and the scores that share its slot.

Registry (``SCORES``): ``ig`` (local empirical Fisher on the client's data, combined with a
global score from aggregated updates), ``uniform``, ``depth-prior`` (rising toward the output)
and ``weight-norm`` (‖W‖_F of the frozen weight). Every score is a [layers, modules] array
summing to 1; a profile stores it as ``importance = {"method", "values": {module: [...]}, ...}``
and the planner maximises Σ score · u(rank) (``lora_planner.value``).

Functions an executor calls each round (numpy only): :func:`combine` (Γ = β g_loc + (1−β) g_glob),
:func:`initial_global` (before round 1), :func:`global_update` (EMA of ‖ΔW‖ per entry, with
:func:`update_norms` turning ``aggregation.delta_weights(result)`` into those norms).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import LoraPlannerError
from ..registry import Plugin, Registry
from .measure import update_norms  # numpy at import time; torch only inside the functions that need it
from .scores import (combine, depth_prior, from_values, global_update, initial_global, normalise, spearman, to_values,
                     uniform)


class ImportanceScore(Protocol):
    """A layer score: a [layers, modules] array (any scale; it is normalised after) and facts about it."""

    needs_model: bool  # real weights (a local folder)
    needs_data: bool

    def compute(self, request: "ScoreRequest") -> tuple[np.ndarray, dict]: ...


@dataclass(frozen=True)
class ScoreRequest:
    """Everything a score may use; each score reads what it needs."""

    model: str
    modules: Sequence[str]
    num_layers: int
    task: str = "seq-cls"
    num_labels: int = 2
    data: object = None
    samples: int | None = 128
    seed: int = 0
    probe_rank: int = 8
    batch_size: int = 8
    max_length: int = 128
    indices: Sequence[int] | None = None
    progress: Callable[[str, int], Callable[[], None]] | None = None


@dataclass(frozen=True)
class PriorScore:
    """A data-free score computed from the shape alone (``uniform``, ``depth-prior``)."""

    fn: Callable[[int, int], np.ndarray]
    needs_model: bool = False
    needs_data: bool = False

    def compute(self, request: ScoreRequest) -> tuple[np.ndarray, dict]:
        return self.fn(request.num_layers, len(request.modules)), {}


class WeightNormScore:
    needs_model, needs_data = True, False

    def compute(self, request: ScoreRequest) -> tuple[np.ndarray, dict]:
        from .measure import load_model, weight_norm

        net, _, folder = load_model(request.model, request.task, request.num_labels, request.seed)
        return weight_norm(net, request.modules), {"weights": str(folder)}


class LocalIGScore:
    needs_model, needs_data = True, True

    def compute(self, request: ScoreRequest) -> tuple[np.ndarray, dict]:
        from ..data.tokenize import tokenized_batches
        from .measure import load_model, local_ig

        r = request
        net, tokenizer, folder = load_model(r.model, r.task, r.num_labels, r.seed)
        batches = tokenized_batches(tokenizer, r.data, batch_size=r.batch_size, max_length=r.max_length, samples=r.samples,
                                    seed=r.seed, indices=r.indices, num_labels=r.num_labels if r.task == "seq-cls" else None)
        tick = r.progress("IG-Score", len(batches)) if r.progress else None
        mat, more = local_ig(net, batches, r.modules, r.task, probe_rank=r.probe_rank, progress=tick)
        return mat, {"weights": str(folder), **more, "data": getattr(r.data, "source", None),
                     "samples": sum(len(b["labels"]) for b in batches), "seed": r.seed, "batch_size": r.batch_size,
                     "max_length": r.max_length}


SCORES: Registry[ImportanceScore] = Registry("score", "importance", [
    Plugin("ig", "local IG-Score: empirical Fisher of LoRA at a probe rank on your data (Fed-piLot)", LocalIGScore()),
    Plugin("uniform", "every (layer, module) worth the same", PriorScore(uniform)),
    Plugin("depth-prior", "rising linearly toward the output (LEGEND)", PriorScore(depth_prior)),
    Plugin("weight-norm", "Frobenius norm of the frozen weight", WeightNormScore()),
])


def get_score(name: str) -> ImportanceScore:
    """The score called ``name`` (one-line error with the nearest known name)."""
    return SCORES.get(name).obj


def compute_importance(name: str, model: str, modules: Sequence[str], num_layers: int, task: str = "seq-cls",
                       num_labels: int = 2, data=None, samples: int | None = 128, seed: int = 0, probe_rank: int = 8,
                       batch_size: int = 8, max_length: int = 128, indices: Sequence[int] | None = None,
                       progress: Callable[[str, int], Callable[[], None]] | None = None) -> dict:
    """One score as the profile's ``importance`` block.

    Args:
        name: a registry name (``SCORES``).
        model: shipped name, local folder or config path (``ig``/``weight-norm`` need local weights).
        modules, num_layers: what to score (the profile's modules and depth).
        data: ``Records`` (seq-cls) or ``Instructions`` (causal-lm), for ``ig``.
        samples, seed, indices: the IG sample: ``samples`` records drawn with ``seed`` (among ``indices``).
        probe_rank, batch_size, max_length: the probe LoRA rank, mini-batch size and token limit.

    Raises:
        LoraPlannerError: unknown score, missing data, no local weights, bad sample size or labels.
    """
    score = get_score(name)
    t = time.perf_counter()
    if score.needs_data and data is None:
        raise LoraPlannerError("data", f"a dataset for importance '{name}'", "nothing", "E.g. --data train.csv.")
    mat, facts = score.compute(ScoreRequest(model, tuple(modules), num_layers, task, num_labels, data, samples, seed, probe_rank,
                                            batch_size, max_length, indices, progress))
    if mat.shape[0] != num_layers:
        raise LoraPlannerError("MODEL", f"a model with the profile's {num_layers} blocks", mat.shape[0], "Profile this model.")
    mat = normalise(mat)
    return {"method": name, "values": to_values(mat, modules), **facts, "seconds": time.perf_counter() - t}


__all__ = ["SCORES", "ImportanceScore", "PriorScore", "ScoreRequest", "combine", "compute_importance", "depth_prior",
           "from_values", "get_score", "global_update", "initial_global", "normalise", "spearman", "to_values", "uniform",
           "update_norms"]
