"""The memory model (DESIGN §4): peak bytes of one training step for any LoRA assignment.

An *assignment* maps (layer, module) to a LoRA rank; absent entries carry no adapter.
Peak = max over the phases of a step (forward, loss, backward, optimizer) of a separable sum;
see ``PhaseTerms``. Pure Python, no torch: it sits on the planning path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from .errors import LoraPlannerError
from .profile import CKPT_KINDS, TERM_KINDS, ModelProfile, basis, fit_shapes

Assignment = Mapping[tuple[int, str], int]


@dataclass(frozen=True)
class ShapeTerms:
    """One phase's terms evaluated at a (batch, seq) shape, in bytes (float; summed, then ceil)."""

    fixed: float
    path: float
    path_low: Mapping[str, float]
    top_low: Mapping[str, float]
    group: Mapping[str, float]
    module: Mapping[str, float]
    rank: Mapping[str, float]
    top: Mapping[str, float]
    top_rank: Mapping[str, float]
    static: Mapping[str, float]  # per module, per unit of rank: adapter weights alive in this phase
    above: Mapping[str, float] = None  # gradient checkpointing only: the adapters of blocks above / below
    above_rank: Mapping[str, float] = None
    below: Mapping[str, float] = None
    below_rank: Mapping[str, float] = None
    pair: Mapping[str, float] = None  # ... and two adapted modules of the running block that do not add up


def _dot(c, b) -> float:
    return float(sum(x * y for x, y in zip(c, b)))


def evaluate(profile: ModelProfile, batch: int | None = None, seq: int | None = None) -> dict[str, ShapeTerms]:
    """Every phase's terms at the given shape (default: the profile's own)."""
    batch = profile.batch_size if batch is None else batch
    seq = profile.seq_len if seq is None else seq
    check_shape(profile, batch, seq)
    b = basis(batch, seq)
    out = {}
    for phase, t in profile.phases.items():
        out[phase] = ShapeTerms(
            fixed=_dot(t.fixed, b), path=_dot(t.path, b),
            **{k: {n: _dot(v, b) for n, v in getattr(t, k).items()} for k in TERM_KINDS + CKPT_KINDS if k not in ("fixed", "path")},
            static=static_per_rank(profile, phase.rstrip("@")),
        )
    return out


# Copies of each adapter weight alive in a phase: the weight and AdamW's two moments; from the
# backward on, its gradient too (gradients start as None: zero_grad(set_to_none=True)).
ADAPTER_COPIES = {"fwd": 3, "loss": 3, "bwd": 4, "opt": 4}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
QUANT_PARAM_BYTES = {"nf4": 0.5, "int8": 1.0}  # what parameter-only calculators charge a quantised weight


def static_per_rank(profile: ModelProfile, phase: str) -> dict[str, float]:
    """Bytes per unit of rank that an adapted module holds whatever the step is doing (its A and B
    weights, their AdamW moments and, from the backward on, their gradients)."""
    return adapter_state_per_rank(profile.modules, phase, profile.conditions.get("adapter_dtype", "fp32"))


def adapter_state_per_rank(modules, phase: str, adapter_dtype: str = "fp32") -> dict[str, float]:
    nbytes = DTYPE_BYTES[adapter_dtype] * ADAPTER_COPIES[phase]
    return {m.name: float(nbytes * (m.in_features + m.out_features)) for m in modules}


def check_shape(profile: ModelProfile, batch: int, seq: int) -> None:
    for name, value in (("batch_size", batch), ("seq_len", seq)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LoraPlannerError(name, "a positive whole number", value, "E.g. batch size 1, sequence length 512.")
    if profile.max_positions and seq > profile.max_positions:
        raise LoraPlannerError(
            "seq_len", f"at most {profile.max_positions} (the context length of {profile.name})", seq,
            f"Use a sequence length of {profile.max_positions} or less.",
        )


def check_assignment(profile: ModelProfile, assignment: Assignment) -> None:
    names = set(profile.module_names)
    for (layer, module), rank in assignment.items():
        if not (isinstance(layer, int) and 0 <= layer < profile.num_layers):
            raise LoraPlannerError("layer", f"an index in 0..{profile.num_layers - 1}", layer, "Check layers_to_transform.")
        if module not in names:
            profile.module(module)  # raises with the nearest name
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise LoraPlannerError(f"rank of {profile.full_name(layer, module)}", "a positive whole number", rank, "PEFT rejects r=0: leave the module out instead.")


def layer_cost(t: ShapeTerms, ranks: Mapping[str, int], profile: ModelProfile, lowest: bool, top: bool = False) -> float:
    """Bytes one block adds in one phase when its adapted modules have these ranks.

    ``lowest``: this block is the lowest trained one, so backward only partly traverses it;
    ``top``: it is the top block.
    """
    if not ranks:
        return t.path
    group_of = profile.group_of
    groups = {group_of[m] for m in ranks}
    cost = low_block_cost(t.top_low if top else t.path_low, set(ranks), profile) if lowest else t.path
    cost += sum(t.group.get(g, 0.0) for g in groups)
    cost += sum(t.module[m] + r * t.rank[m] for m, r in ranks.items())
    if top:
        cost += top_extra(t, ranks, profile.order_of)
    return cost


def top_extra(t: ShapeTerms, ranks: Mapping[str, int], order_of: Mapping[str, int]) -> float:
    """What the top block adds beyond its modules' own terms (and, when it is the lowest block,
    beyond its traversal term top_low).

    The step's peak sits in the top block (the end of the forward, the start of the backward), at
    one module's moment: that module's transient ``top[m]`` counts, and the modules that run
    after it in the forward (before it in the backward) hold only their weights, optimizer state
    and gradients then, not their activations. So: max over adapted m of
    top[m] + r_m·top_rank[m] − Σ_{adapted j after m} (module[j] + r_j·rank[j] − r_j·static[j]).
    Traced over every subset of the top block's modules on seven architectures (bench/block_census.py):
    never under, exact on six (docs/memory-model.md).
    """
    order = sorted(ranks, key=order_of.__getitem__)
    best, later = -math.inf, 0.0
    for m in reversed(order):
        r = ranks[m]
        best = max(best, t.top[m] + r * t.top_rank[m] - later)
        later += t.module[m] + r * (t.rank[m] - t.static[m])
    return best


def low_block_cost(terms: Mapping[str, float], adapted: set[str], profile: ModelProfile) -> float:
    """Traversal of the lowest block: per parallel branch of the block, the max over the group subsets T
    within the adapted set of terms[T] (a deeper traversal includes the later ones); the branches add up
    (ModuleInfo.branch: backward walks each of GPT-NeoX's parallel attention and MLP branches on its own)."""
    best: dict[int, float] = {}
    branch_of = profile.branch_of_key
    for key, members in profile.low_key_sets():
        if members <= adapted:
            b = branch_of[key]
            best[b] = max(best[b], terms[key]) if b in best else terms[key]
    if len(best) == 1:
        return next(iter(best.values()))
    return sum(max(v, 0.0) for v in best.values())  # as solvers.problem (each branch at least 0): never less


def _ceil_bytes(x: float) -> int:
    """Bytes up, ignoring what least-squares rounding adds: fitted terms carry noise of ~1e-8 bytes that
    differs between runs (LAPACK's results depend on its buffers' alignment, numpy#8404), and 859712.0000000001
    must not predict a byte more than 859711.9999999927."""
    return int(math.ceil(x - 1e-6))


def predict_phases(profile: ModelProfile, assignment: Assignment, batch: int | None = None, seq: int | None = None,
                   terms: Mapping[str, ShapeTerms] | None = None) -> dict[str, int]:
    """Predicted peak live tensor bytes of each phase of a steady-state training step."""
    check_assignment(profile, assignment)
    if not assignment:
        raise LoraPlannerError("assignment", "non-empty (at least one adapted module)", "an empty assignment", "Adapt at least one module.")
    terms = terms or evaluate(profile, batch, seq)
    per_layer: dict[int, dict[str, int]] = {}
    for (layer, module), rank in assignment.items():
        per_layer.setdefault(layer, {})[module] = rank
    if profile.checkpointed:
        return _predict_checkpointed(profile, per_layer, terms)
    low = min(per_layer)
    out = {}
    for phase, t in terms.items():
        total = t.fixed
        for layer in range(low, profile.num_layers):
            total += layer_cost(t, per_layer.get(layer, {}), profile, lowest=(layer == low), top=(layer == profile.num_layers - 1))
        out[phase] = _ceil_bytes(total)
    return out


def checkpointed_block_costs(t: ShapeTerms, per_layer: Mapping[int, Mapping[str, int]], profile: ModelProfile) -> list[float]:
    """Gradient checkpointing: one block phase's peak while each block runs (profiling/ckpt_fit.py)."""
    L, top, group_of = profile.num_layers, profile.num_layers - 1, profile.group_of
    above = [sum(t.above[m] + r * t.above_rank[m] for m, r in per_layer.get(l, {}).items()) for l in range(L)]
    below = [sum(t.below[m] + r * t.below_rank[m] for m, r in per_layer.get(l, {}).items()) for l in range(L)]
    out, under = [], 0.0
    over = sum(above)
    for l in range(L):
        ranks = per_layer.get(l, {})
        over -= above[l]
        own = sum(t.group.get(g, 0.0) for g in {group_of[m] for m in ranks}) + sum(t.module[m] + r * t.rank[m] for m, r in ranks.items())
        own += sum(v for key, v in (t.pair or {}).items() if all(m in ranks for m in key.split("+")))
        out.append(t.fixed - (top - l) * t.path + own + over + under)
        under += below[l]
    return out


def _predict_checkpointed(profile: ModelProfile, per_layer, terms) -> dict[str, int]:
    out = {}
    for phase, t in terms.items():
        if phase.endswith("@"):
            out[phase] = _ceil_bytes(max(checkpointed_block_costs(t, per_layer, profile)))
        else:
            out[phase] = _ceil_bytes(t.fixed + sum(t.module[m] + r * t.rank[m] for ranks in per_layer.values()
                                                   for m, r in ranks.items()))
    return out


def predict_tensor_bytes(profile: ModelProfile, assignment: Assignment, batch: int | None = None, seq: int | None = None) -> int:
    """Predicted peak live tensor bytes (weights, activations, grads, optimizer state, temporaries)."""
    return max(predict_phases(profile, assignment, batch, seq).values())


def shape_note(profile: ModelProfile, batch: int, seq: int) -> str | None:
    """A warning when the asked shape is far below the token counts the profile was fitted on:
    there the peak can move to another moment of the step and the separable terms stop holding
    (docs/memory-model.md, "What is left")."""

    fitted_min = min(b * s for b, s in fit_shapes(profile.batch_size, profile.seq_len))
    if batch * seq * 4 > fitted_min:
        return None
    return (f"{batch} x {seq} = {batch * seq} tokens is far below the {fitted_min}+ tokens this profile was fitted on: "
            f"estimates can be off by more than 5 % here; for exact numbers re-profile with "
            f"`lora-planner profile --batch-size {batch} --seq-len {seq}`.")


def fixed_bytes(profile: ModelProfile, batch: int | None = None, seq: int | None = None) -> int:
    """The least any training step needs: the cheapest single module at rank 1 in the top block."""
    top = profile.num_layers - 1
    return min(predict_tensor_bytes(profile, {(top, m): 1}, batch, seq) for m in profile.module_names)


def rule_of_thumb_bytes(profile: ModelProfile, assignment: Assignment) -> int:
    """What parameter-only calculators say: frozen weights + LoRA params, grads and AdamW state.

    Ignores activations entirely; shown beside our prediction to make the gap visible.
    """
    state = static_per_rank(profile, "opt")  # LoRA param + grad + AdamW exp_avg + exp_avg_sq, per unit of rank
    per_param = QUANT_PARAM_BYTES.get(profile.conditions.get("quantization") or "", DTYPE_BYTES[profile.conditions["dtype"]])
    return int(profile.param_count * per_param + sum(r * state[m] for (_, m), r in assignment.items()))
