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

from ..errors import LoraPlannerError, nearest
from .measure import update_norms  # numpy at import time; torch only inside the functions that need it
from .scores import (combine, depth_prior, from_values, global_update, initial_global, normalise, spearman, to_values,
                     uniform)


@dataclass(frozen=True)
class Score:
    name: str
    summary: str
    needs_model: bool  # real weights (a local folder)
    needs_data: bool


SCORES = {s.name: s for s in (
    Score("ig", "local IG-Score: empirical Fisher of LoRA at a probe rank on your data (Fed-piLot)", True, True),
    Score("uniform", "every (layer, module) worth the same", False, False),
    Score("depth-prior", "rising linearly toward the output (LEGEND)", False, False),
    Score("weight-norm", "Frobenius norm of the frozen weight", True, False),
)}


def get_score(name: str) -> Score:
    if name not in SCORES:
        raise LoraPlannerError("--importance", f"one of {', '.join(SCORES)}", name, nearest(name, SCORES))
    return SCORES[name]


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
    facts: dict = {}
    if score.needs_data and data is None:
        raise LoraPlannerError("--data", f"a dataset for --importance {name}", "nothing", "E.g. --data train.csv.")
    if name == "uniform":
        mat = uniform(num_layers, len(modules))
    elif name == "depth-prior":
        mat = depth_prior(num_layers, len(modules))
    else:
        from ..data.tokenize import tokenized_batches
        from .measure import load_model, local_ig, weight_norm

        net, tokenizer, folder = load_model(model, task, num_labels, seed)
        facts["weights"] = str(folder)
        if name == "weight-norm":
            mat = weight_norm(net, modules)
        else:
            batches = tokenized_batches(tokenizer, data, batch_size=batch_size, max_length=max_length, samples=samples,
                                        seed=seed, indices=indices, num_labels=num_labels if task == "seq-cls" else None)
            tick = progress("IG-Score", len(batches)) if progress else None
            mat, more = local_ig(net, batches, modules, task, probe_rank=probe_rank, progress=tick)
            facts.update(more, data=getattr(data, "source", None), samples=sum(len(b["labels"]) for b in batches), seed=seed,
                         batch_size=batch_size, max_length=max_length)
        if mat.shape[0] != num_layers:
            raise LoraPlannerError("MODEL", f"a model with the profile's {num_layers} blocks", mat.shape[0], "Profile this model.")
    mat = normalise(mat)
    return {"method": name, "values": to_values(mat, modules), **facts, "seconds": time.perf_counter() - t}


__all__ = ["SCORES", "Score", "combine", "compute_importance", "depth_prior", "from_values", "get_score", "global_update",
           "initial_global", "normalise", "spearman", "to_values", "uniform", "update_norms"]
