"""Model configs without torch: shipped names, local folders and config.json files.

The profiler's parent process uses only this (and transformers' config classes); building and
tracing models happens in its workers (``build.py``, ``trace.py``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoraPlannerError, nearest
from ..memory import DTYPE_BYTES
from ..profile import ModuleInfo, profiles_dir

DTYPE_NAMES = tuple(DTYPE_BYTES)
TASKS = ("causal-lm", "seq-cls")


def shipped_configs() -> dict[str, Path]:
    d = profiles_dir() / "configs"
    return {p.stem: p for p in sorted(d.glob("*.json"))} if d.is_dir() else {}


def load_config(model: str):
    """A transformers config from a shipped model name, a local HF folder or a config.json path."""
    from transformers import AutoConfig

    path = config_path(model)
    if path is None:
        raise LoraPlannerError("MODEL", "a shipped model name, a local Hugging Face folder or a config.json path", model,
                               nearest(model, shipped_configs()))
    try:
        body = json.loads(path.read_text())
        body = {k: v for k, v in body.items() if not k.startswith("_lp_")}
        model_type = body.pop("model_type")
        return AutoConfig.for_model(model_type, **body)
    except OSError as exc:
        raise LoraPlannerError("MODEL", "a readable config.json", str(path), f"({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise LoraPlannerError("MODEL", "a valid config.json", f"{path} (JSON broken at line {exc.lineno})", "Fix the file.") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise LoraPlannerError("MODEL", "a transformers config with a known model_type", str(path), f"({exc})") from None


def default_task(config) -> str:
    arch = (getattr(config, "architectures", None) or [""])[0]
    return "causal-lm" if ("CausalLM" in arch or "LMHead" in arch) else "seq-cls"


def num_layers(config) -> int:
    return int(config.num_hidden_layers)


def truncated(config, layers: int):
    """A copy of the config with only the first ``layers`` blocks (per-layer lists sliced too)."""
    cfg = config.__class__.from_dict(config.to_dict())
    n = num_layers(config)
    for key, value in cfg.to_dict().items():
        if isinstance(value, list) and len(value) == n and key != "architectures":
            setattr(cfg, key, value[:layers])
    cfg.num_hidden_layers = layers
    return cfg


def config_path(model: str) -> Path | None:
    """The config.json a model argument points at (a folder's may not exist), or None when it names
    neither a shipped model, a folder nor a file. No transformers."""
    path = shipped_configs().get(model) or Path(model)
    if path.is_dir():
        return path / "config.json"
    return path if path.is_file() else None


def modeling_module(model: str) -> str | None:
    """The transformers modeling module of a model argument, read from its config.json without
    importing transformers (to start importing it in trace workers at once); None if unknown."""
    path = config_path(model)
    try:
        model_type = json.loads(path.read_text())["model_type"] if path else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(model_type, str):
        return None
    name = model_type.replace("-", "_")
    return f"transformers.models.{name}.modeling_{name}"


@dataclass
class Discovery:
    """What discovery (build.discover) found; torch-free, so it crosses back from a worker cheaply."""

    prefix: str
    modules: tuple[ModuleInfo, ...]
    param_count: int
    max_positions: int | None
    attn_implementation: str
