"""ModelProfile: what the profiler learnt about one model, as a checksummed JSON file.

Memory terms are stored as coefficients over a shape basis (see ``BASIS``) so that one profile
predicts any micro-batch size and sequence length; ``memory.py`` evaluates them.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from .atomic import write_json_atomic
from .errors import LoraPlannerError, nearest

SCHEMA_VERSION = 4  # 3: module terms measured in a middle block, plus per-module top-block terms;
# 4: the step is training.step.train_step (outputs released before backward, as transformers.Trainer)
# A term's bytes at (batch B, sequence S) with T = B*S tokens:
#   c[0] + c[1]*T + c[2]*T*S + c[3]*S*S
# (constant: weights and LoRA state; T: activations; T*S: attention scores; S^2: a shared mask).
BASIS = ("1", "T", "T*S", "S^2")
PHASES = ("fwd", "loss", "bwd", "opt")
TERM_KINDS = ("fixed", "path", "path_low", "top_low", "group", "module", "rank", "top", "top_rank")
# Gradient checkpointing (conditions["gradient_checkpointing"]): two more phases, one peak per block each
# ("fwd@", "bwd@": memory.py takes the largest over the blocks), whose terms also count the adapters of the
# blocks above and below the one running (``above``, ``below``; profiling/ckpt_fit.py), and, where two
# adapted modules of the running block do not add up (their peaks fall at different moments), a pair term
# (``pair``, keyed ``subset_key`` of the two; found by the profiler, absent where modules add up).
BLOCK_KINDS = ("fwd@", "bwd@")
CKPT_KINDS = ("above", "above_rank", "below", "below_rank", "pair")

Coeffs = tuple[float, ...]


def subset_key(names) -> str:
    """Key of a set of modules of one input-sharing group: names in forward order, joined by '+'."""
    return "+".join(names)


def group_subsets(modules) -> dict[str, list[tuple[str, ...]]]:
    """group -> every non-empty subset of its members (in forward order)."""
    import itertools

    members: dict[str, list[str]] = {}
    for m in sorted(modules, key=lambda m: m.order):
        members.setdefault(m.group, []).append(m.name)
    return {g: [c for k in range(1, len(ms) + 1) for c in itertools.combinations(ms, k)] for g, ms in members.items()}


def basis(batch: int, seq: int) -> tuple[float, float, float, float]:
    tokens = batch * seq
    return (1.0, float(tokens), float(tokens * seq), float(seq * seq))


def fit_shapes(batch: int, seq: int) -> list[tuple[int, int]]:
    """Four shapes whose basis rows are independent; the first is the asked one, the second twice its
    batch (the two the token-scaled terms are fitted on). Sequences under 4 tokens vary the batch only."""
    if seq < 4:
        return [(batch, seq), (2 * batch, seq), (3 * batch, seq), (4 * batch, seq)]
    return [(batch, seq), (2 * batch, seq), (batch, seq // 2), (2 * batch, seq // 4)]


def holdout_shape(batch: int, seq: int) -> tuple[int, int]:
    return (batch + 1, max((3 * seq) // 4, 1))


@dataclass(frozen=True)
class ModuleInfo:
    """One LoRA-able linear module inside a transformer block (same in every block)."""

    name: str  # relative to the block, e.g. "self_attn.q_proj"
    in_features: int
    out_features: int
    group: str  # modules of one group read the same input tensor (stored once)
    order: int  # position in the block's forward pass
    # Parallel branches of the block (GPT-NeoX's parallel attention and MLP: x + attn(ln1 x) + mlp(ln2 x)):
    # backward traverses each branch separately, so the lowest block's traversal terms of two branches add
    # up, where within one branch the deeper traversal includes the later one. Sequential blocks: one branch.
    branch: int = 0


@dataclass(frozen=True)
class PhaseTerms:
    """The separable memory model of one phase of a training step (DESIGN §4, docs/memory-model.md).

    peak = fixed + Σ_{l > low} path + path_low[S_low] + Σ_{blocks, active groups} group[g]
           + Σ_{(l,m)} (module[m] + r · rank[m]) + top_extra(S_top)
    module and rank are what an adapted module keeps in a block the step passes through (measured
    in a middle block: there, adapted modules add up exactly). path_low[S] is the cost of
    traversing the lowest trained block down to its adapted set S: the largest, over input-sharing
    groups g, of the terms of the subsets T ⊆ S ∩ g (keys ``subset_key``; within a group the union
    of what backward must keep is not a max, e.g. adding value next to query keeps the attention
    probabilities). top_low replaces path_low when the lowest trained block is the top block.
    top[m] + r · top_rank[m] is what module m adds when adapted in the top block, beyond its own
    terms: the step's peak sits in the top block, so its transients count there and only there
    (``memory.top_extra`` combines them: the peak is at one module's moment). When the top block is
    the lowest, top_low[S] is its traversal beyond that.
    """

    fixed: Coeffs
    path: Coeffs
    path_low: Mapping[str, Coeffs]
    top_low: Mapping[str, Coeffs]
    group: Mapping[str, Coeffs]
    module: Mapping[str, Coeffs]
    rank: Mapping[str, Coeffs]
    top: Mapping[str, Coeffs]
    top_rank: Mapping[str, Coeffs]
    above: Mapping[str, Coeffs] = field(default_factory=dict)
    above_rank: Mapping[str, Coeffs] = field(default_factory=dict)
    below: Mapping[str, Coeffs] = field(default_factory=dict)
    below_rank: Mapping[str, Coeffs] = field(default_factory=dict)
    pair: Mapping[str, Coeffs] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelProfile:
    name: str
    architecture: str
    task: str
    num_layers: int
    layer_prefix: str  # e.g. "model.layers": full names are f"{layer_prefix}.{i}.{module}"
    modules: tuple[ModuleInfo, ...]
    default_targets: tuple[str, ...]
    max_positions: int | None
    param_count: int
    conditions: Mapping[str, Any]
    phases: Mapping[str, PhaseTerms]
    validation: Mapping[str, Any] = field(default_factory=dict)
    importance: Mapping[str, Any] | None = None

    # ---- names ----------------------------------------------------------------------------
    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

    def module(self, name: str) -> ModuleInfo:
        for m in self.modules:
            if m.name == name:
                return m
        raise LoraPlannerError("target module", f"one of the modules of {self.name}", name, nearest(name, self.module_names))

    def low_key_sets(self) -> list[tuple[str, frozenset]]:
        """(key, members) of every group subset that has a path_low term (members as a frozenset)."""
        return self._low_key_sets

    @cached_property
    def _low_key_sets(self) -> list[tuple[str, frozenset]]:
        return [(subset_key(t), frozenset(t)) for subs in group_subsets(self.modules).values() for t in subs]

    @cached_property
    def branch_of_key(self) -> dict[str, int]:
        """Key of a group subset -> the block branch its group lies on (0 for sequential blocks)."""
        branch = {m.name: m.branch for m in self.modules}
        return {key: branch[next(iter(members))] for key, members in self._low_key_sets}

    @cached_property
    def group_of(self) -> dict[str, str]:
        return {m.name: m.group for m in self.modules}

    @cached_property
    def order_of(self) -> dict[str, int]:
        """Module name -> its position in the block's forward pass."""
        return {m.name: m.order for m in self.modules}

    def full_name(self, layer: int, module: str) -> str:
        return f"{self.layer_prefix}.{layer}.{module}"

    def resolve_targets(self, targets: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
        """Map user target names ('q_proj' or 'self_attn.q_proj') to the profile's module names."""
        if not targets:
            return self.default_targets
        out = []
        for t in targets:
            hits = [m.name for m in self.modules if m.name == t or m.name.endswith("." + t)]
            if not hits:
                raise LoraPlannerError(
                    "target module", f"a linear module inside the blocks of {self.name}", t,
                    nearest(t, sorted({m.name.split(".")[-1] for m in self.modules} | set(self.module_names))),
                )
            out += [h for h in hits if h not in out]
        return tuple(out)

    @property
    def checkpointed(self) -> bool:
        """Profiled with gradient checkpointing on (its terms are per block phase: profiling/ckpt_fit.py)."""
        return bool(self.conditions.get("gradient_checkpointing", False))

    @property
    def quantization(self) -> str | None:
        """The quantised base it was profiled on ("nf4", "int8"), or None (conditions["quantization"])."""
        return self.conditions.get("quantization") or None

    @property
    def condition_set(self) -> str:
        """Its condition set's name, as ``profile --list`` shows it: plain, gradient-checkpointing, nf4, nf4+gradient-checkpointing, ..."""
        return condition_name(self.checkpointed, self.quantization)

    @property
    def batch_size(self) -> int:
        return int(self.conditions["batch_size"])

    @property
    def seq_len(self) -> int:
        return int(self.conditions["seq_len"])

    # ---- files ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        body = {f: getattr(self, f) for f in self.__dataclass_fields__}
        body = json.loads(json.dumps(body, default=_plain))
        body = {"schema_version": SCHEMA_VERSION, **body}
        body["checksum"] = _checksum(body)
        return body

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename): a crash never leaves a partial profile."""
        write_json_atomic(path, self.to_json())


def _plain(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(type(obj).__name__)


_TOP_KEYS = {f.name for f in ModelProfile.__dataclass_fields__.values()} | {"schema_version", "checksum"}


def _checksum(body: Mapping[str, Any]) -> str:
    payload = {k: v for k, v in body.items() if k != "checksum"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def profile_from_json(body: Mapping[str, Any], source: str = "profile") -> ModelProfile:
    """Validate and build a profile from parsed JSON. Raises LoraPlannerError on any defect."""
    if not isinstance(body, dict):
        raise LoraPlannerError(source, "a JSON object", type(body).__name__, "Regenerate it with `lora-planner profile`.")
    version = body.get("schema_version")
    if version != SCHEMA_VERSION:
        raise LoraPlannerError(
            f"{source}: schema_version", f"{SCHEMA_VERSION} (this lora-planner's)", version,
            "Regenerate the profile with this version's `lora-planner profile`.",
        )
    unknown = set(body) - _TOP_KEYS
    if unknown:
        raise LoraPlannerError(f"{source}: keys", f"among {', '.join(sorted(_TOP_KEYS))}", ", ".join(sorted(unknown)), "Remove the unknown keys.")
    missing = _TOP_KEYS - set(body) - {"validation", "importance"}
    if missing:
        raise LoraPlannerError(f"{source}: keys", "complete", f"missing {', '.join(sorted(missing))}", "Regenerate the profile.")
    if body["checksum"] != _checksum(body):
        raise LoraPlannerError(
            f"{source}: checksum", "the checksum of its contents", body["checksum"],
            "The file was edited or damaged; regenerate it with `lora-planner profile`.",
        )
    try:
        modules = tuple(ModuleInfo(**m) for m in body["modules"])
        phases = {
            p: PhaseTerms(
                fixed=tuple(t["fixed"]), path=tuple(t["path"]),
                **{k: {n: tuple(c) for n, c in t[k].items()} for k in TERM_KINDS if k not in ("fixed", "path")},
                **{k: {n: tuple(c) for n, c in t.get(k, {}).items()} for k in CKPT_KINDS},
            )
            for p, t in body["phases"].items()
        }
        return ModelProfile(
            name=body["name"], architecture=body["architecture"], task=body["task"],
            num_layers=int(body["num_layers"]), layer_prefix=body["layer_prefix"], modules=modules,
            default_targets=tuple(body["default_targets"]), max_positions=body["max_positions"],
            param_count=int(body["param_count"]), conditions=dict(body["conditions"]), phases=phases,
            validation=dict(body.get("validation") or {}), importance=body.get("importance"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LoraPlannerError(source, "a well-formed lora-planner profile", f"a file with a bad field ({exc})", "Regenerate it.") from None


def load_profile(path: str | os.PathLike) -> ModelProfile:
    """Load a profile JSON file, checking schema version, keys and checksum."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LoraPlannerError("--profile", "a readable profile file", str(path), f"({exc.strerror}) Check the path.") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoraPlannerError(
            "--profile", "valid JSON", f"{path} (broken at line {exc.lineno})",
            "The file is truncated or damaged; regenerate it with `lora-planner profile`.",
        ) from None
    return profile_from_json(body, source=str(path))


# ---- shipped profiles ----------------------------------------------------------------------

def profiles_dir() -> Path:
    """Where shipped profiles live: $LORA_PLANNER_PROFILES, else the checkout's profiles/."""
    env = os.environ.get("LORA_PLANNER_PROFILES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "profiles"


# A shipped profile per model and condition set: profiles/NAME.json (plain: no lever), NAME@gc.json (gradient
# checkpointing on), NAME@nf4.json and NAME@int8.json (a bitsandbytes base), NAME@nf4+gc.json, NAME@int8+gc.json.
QUANT_NAMES = ("nf4", "int8")


def condition_name(gradient_checkpointing: bool, quantization: str | None) -> str:
    parts = ([quantization] if quantization else []) + (["gradient-checkpointing"] if gradient_checkpointing else [])
    return "+".join(parts) or "plain"


def condition_suffix(gradient_checkpointing: bool, quantization: str | None) -> str:
    parts = ([quantization] if quantization else []) + (["gc"] if gradient_checkpointing else [])
    return "@" + "+".join(parts) if parts else ""


CONDITION_SUFFIX = {condition_name(gc, q): condition_suffix(gc, q) for q in (None, *QUANT_NAMES) for gc in (False, True)}
ALL_CONDITIONS = tuple(CONDITION_SUFFIX)


def parse_conditions(text: str | Sequence[str], field: str = "--conditions") -> list[tuple[bool, str | None]]:
    """Condition sets as (gradient_checkpointing, quantization): "all", or names separated by commas, each
    ``plain`` or levers joined by '+' (``gc`` or ``gradient-checkpointing``, ``nf4``, ``int8``), e.g.
    ``plain,gc,nf4+gc``. Duplicates are dropped; order is kept."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names == ["all"]:
        names = list(ALL_CONDITIONS)
    out: list[tuple[bool, str | None]] = []
    for name in names:
        parts = name.split("+")
        quant = [p for p in parts if p in QUANT_NAMES]
        gc = [p for p in parts if p in ("gc", "gradient-checkpointing")]
        if name != "plain" and (len(quant) + len(gc) != len(parts) or len(quant) > 1 or len(gc) > 1):
            raise LoraPlannerError(field, "all, or condition sets like plain, gc, nf4, nf4+gc, int8, int8+gc", name,
                                   "E.g. --conditions plain,gc,nf4+gc or --conditions all.")
        key = (bool(gc), quant[0] if quant else None)
        if key not in out:
            out.append(key)
    if not out:
        raise LoraPlannerError(field, "at least one condition set", repr(text), "E.g. --conditions all.")
    return out


def shipped_models() -> list[str]:
    d = profiles_dir()
    return sorted(p.stem for p in d.glob("*.json") if "@" not in p.stem) if d.is_dir() else []


def shipped_conditions() -> dict[str, list[str]]:
    """Model name -> the condition sets it has a shipped profile for."""
    d = profiles_dir()
    out: dict[str, list[str]] = {}
    for name in shipped_models():
        out[name] = [c for c, suffix in CONDITION_SUFFIX.items() if (d / f"{name}{suffix}.json").is_file()]
    return out


def shipped_profile(name: str, gradient_checkpointing: bool = False, quantization: str | None = None) -> ModelProfile:
    """The shipped profile of a model name such as 'llama-2-7b' under a condition set (levers off by default)."""
    known = shipped_models()
    if name not in known:
        raise LoraPlannerError("--model", "a shipped model name", name, nearest(name, known) + " Or pass --profile FILE.")
    if quantization is not None and quantization not in QUANT_NAMES:
        raise LoraPlannerError("--quantization", f"one of {', '.join(QUANT_NAMES)}", quantization, "E.g. --quantization nf4.")
    condition = condition_name(gradient_checkpointing, quantization)
    path = profiles_dir() / f"{name}{CONDITION_SUFFIX[condition]}.json"
    if not path.is_file():
        have = ", ".join(shipped_conditions()[name])
        flags = (f" --quantization {quantization}" if quantization else "") + (" --gradient-checkpointing" if gradient_checkpointing else "")
        field = "--quantization" if quantization else "--gradient-checkpointing"
        raise LoraPlannerError(field, f"a condition set shipped for {name} ({have})", condition,
                               f"Profile it: lora-planner profile {name}{flags} -o p.json, then --profile p.json.")
    return load_profile(path)
