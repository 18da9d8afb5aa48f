"""Assignments ⇄ PEFT ``adapter_config.json`` dictionaries, without importing peft or torch.

Written configs name every adapted module by its full name in ``target_modules`` (PEFT adapts
exactly those), repeat the layers in ``layers_to_transform`` (never empty: PEFT reads an empty
list as *all layers*), and give every rank and alpha in ``rank_pattern`` / ``alpha_pattern``
with full, regex-escaped names (PEFT matches pattern keys against the end of the name; a
partial key is silently ignored). ``assignment_from_adapter_config`` replays PEFT 0.21's
matching rules (``check_target_module_exists``, ``get_pattern_key``) on the profile's names.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from .errors import LoraPlannerError
from .memory import Assignment, check_assignment
from .profile import ModelProfile

TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS"}


def to_adapter_config(profile: ModelProfile, assignment: Assignment, alphas: Mapping[tuple[int, str], float] | None = None,
                      lora_dropout: float = 0.0, base_model: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` contents that make PEFT build exactly this assignment.

    Args:
        profile: the model's profile (for full module names).
        assignment: (layer, module) -> rank, non-empty.
        alphas: (layer, module) -> lora_alpha; default 2 * rank.
    """
    check_assignment(profile, assignment)
    if not assignment:
        raise LoraPlannerError("plan", "non-empty (PEFT reads an empty layers_to_transform as all layers)", "no adapted module",
                               "Raise the memory budget or drop this client.")
    alphas = alphas or {k: 2 * r for k, r in assignment.items()}
    names = {k: profile.full_name(*k) for k in sorted(assignment)}
    default_r = Counter(assignment.values()).most_common(1)[0][0]
    default_alpha = Counter(alphas.values()).most_common(1)[0][0]
    layer_pattern = profile.layer_prefix.split(".")[-1]
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPES.get(profile.task, None),
        "base_model_name_or_path": base_model or profile.name,
        "r": default_r,
        "lora_alpha": default_alpha,
        "lora_dropout": lora_dropout,
        "bias": "none",
        "target_modules": [names[k] for k in sorted(names)],
        "layers_to_transform": sorted({layer for layer, _ in assignment}),
        "layers_pattern": layer_pattern,
        "rank_pattern": {re.escape(names[k]): int(assignment[k]) for k in sorted(names)},
        "alpha_pattern": {re.escape(names[k]): alphas[k] for k in sorted(names)},
        "inference_mode": False,
    }


def _target_found(cfg: Mapping[str, Any], key: str) -> bool:
    excl = cfg.get("exclude_modules")
    if excl:
        if isinstance(excl, str) and re.fullmatch(excl, key):
            return False
        if not isinstance(excl, str) and (key in excl or any(key.endswith("." + e) for e in excl)):
            return False
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    found = any(key.endswith("." + t) for t in targets)
    layers = cfg.get("layers_to_transform")
    if found and layers is not None and (not isinstance(layers, list) or len(layers) > 0):
        pattern = cfg.get("layers_pattern")
        if not pattern:
            match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
        else:
            match = None
            for p in [pattern] if isinstance(pattern, str) else pattern:
                match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
                if match:
                    break
        if match is None:
            return False
        idx = int(match.group("idx"))
        found = idx == layers if isinstance(layers, int) else idx in layers
    return found


def _pattern_value(patterns: Mapping[str, Any], key: str, default: Any) -> Any:
    """PEFT's rule: the first pattern (in order) matching the end of ``key`` at a dot boundary wins."""
    if not patterns:
        return default
    try:
        literal, regexes = _pattern_table(tuple(patterns.items()))
    except TypeError:  # unhashable values: match one by one
        literal, regexes = {}, [(i, re.compile(rf"(.*\.)?({p})$"), v) for i, (p, v) in enumerate(patterns.items())]
    best = None  # (index, value) of the earliest plain-name pattern that is a dot-suffix of key
    parts = key.split(".")
    for i in range(len(parts)):
        hit = literal.get(".".join(parts[i:]))
        if hit is not None and (best is None or hit[0] < best[0]):
            best = hit
    for index, rx, value in regexes:
        if best is not None and index > best[0]:
            break
        if rx.match(key):
            return value
    return best[1] if best is not None else default


_PLAIN = re.compile(r"(?:[A-Za-z0-9_\-]|\\[.\-_])+")  # letters, digits, _ and -, and escaped . - _
_TABLES: dict[tuple, tuple[dict, list]] = {}


def _pattern_table(items: tuple) -> tuple[dict, list]:
    """Patterns split into plain names (dict lookups on the key's dot-suffixes — our planner emits
    escaped full names) and true regular expressions (compiled once), each keeping its order."""
    table = _TABLES.get(items)
    if table is None:
        literal, regexes = {}, []
        for index, (pat, value) in enumerate(items):
            if _PLAIN.fullmatch(pat):
                literal.setdefault(re.sub(r"\\(.)", r"\1", pat), (index, value))
            else:
                regexes.append((index, re.compile(rf"(.*\.)?({pat})$"), value))
        if len(_TABLES) > 4096:
            _TABLES.clear()
        table = _TABLES[items] = (literal, regexes)
    return table


def assignment_from_adapter_config(profile: ModelProfile, cfg: Mapping[str, Any]) -> Assignment:
    """Which (layer, module) entries, at which ranks, PEFT would build from this config."""
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoraPlannerError("peft_type", "LORA", cfg.get("peft_type"), "Only LoRA adapters are modelled.")
    if not cfg.get("target_modules"):
        raise LoraPlannerError("target_modules", "a list of module names or a regex", cfg.get("target_modules"),
                               f"E.g. {list(profile.default_targets)}.")
    r = cfg.get("r", 8)
    ranks = cfg.get("rank_pattern") or {}
    out: dict[tuple[int, str], int] = {}
    for layer in range(profile.num_layers):
        for m in profile.module_names:
            key = profile.full_name(layer, m)
            if _target_found(cfg, key):
                out[(layer, m)] = int(_pattern_value(ranks, key, r))
    if not out:
        raise LoraPlannerError("target_modules", f"matching at least one module of {profile.name}", cfg.get("target_modules"),
                               f"Its block modules are: {', '.join(profile.module_names)}.")
    return out


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """Read an ``adapter_config.json`` (a file or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
    except OSError as exc:
        raise LoraPlannerError("--lora-config", "a readable adapter_config.json or its folder", str(path), f"({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise LoraPlannerError("--lora-config", "valid JSON", f"{path} (broken at line {exc.lineno})", "Fix or regenerate the file.") from None
    if not isinstance(cfg, dict):
        raise LoraPlannerError("--lora-config", "a JSON object", type(cfg).__name__, "Give a PEFT adapter_config.json.")
    return cfg


def to_lora_config(adapter_config: Mapping[str, Any]):
    """A ``peft.LoraConfig`` from our dictionary (imports peft lazily)."""
    from peft import LoraConfig

    kwargs = {k: v for k, v in adapter_config.items() if k not in ("peft_type",)}
    return LoraConfig(**kwargs)
