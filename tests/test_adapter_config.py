"""Emitted adapter configs build exactly the planned modules and ranks in real PEFT."""
import json

import pytest

from lora_planner import LoraPlannerError
from lora_planner.adapter_config import assignment_from_adapter_config, to_adapter_config


def _peft_ranks(config_path, cfg):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    body = json.loads(config_path.read_text())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(body.pop("model_type"), **body))
    model = get_peft_model(model, LoraConfig(**{k: v for k, v in cfg.items() if k != "peft_type"}))
    out = {}
    for name, mod in model.base_model.model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            layer = int(name.split(".")[2])
            out[(layer, ".".join(name.split(".")[3:]))] = mod.lora_A["default"].out_features
    return out


def test_emitted_config_builds_exactly_the_plan(tiny_llama_profile, tiny_llama_path):
    plan = {(1, "self_attn.q_proj"): 4, (1, "mlp.down_proj"): 16, (3, "self_attn.v_proj"): 8, (2, "mlp.up_proj"): 2}
    cfg = to_adapter_config(tiny_llama_profile, plan)
    assert cfg["layers_to_transform"] == [1, 2, 3]
    assert _peft_ranks(tiny_llama_path, cfg) == plan
    assert assignment_from_adapter_config(tiny_llama_profile, cfg) == plan


@pytest.mark.parametrize("cfg", [
    {"r": 8, "target_modules": ["q_proj", "v_proj"]},
    {"r": 8, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0, 2], "layers_pattern": "layers"},
    {"r": 4, "target_modules": ["q_proj", "down_proj"], "rank_pattern": {"down_proj": 16, r"layers\.2\.self_attn\.q_proj": 32}},
    {"r": 8, "target_modules": r".*\.(1|3)\.mlp\.(gate|up)_proj"},
    {"r": 8, "target_modules": "all-linear", "exclude_modules": ["o_proj"]},
])
def test_reading_a_config_agrees_with_peft(tiny_llama_profile, tiny_llama_path, cfg):
    assert assignment_from_adapter_config(tiny_llama_profile, cfg) == _peft_ranks(tiny_llama_path, cfg)


def test_an_empty_plan_is_never_emitted(tiny_llama_profile):
    with pytest.raises(LoraPlannerError, match="empty"):
        to_adapter_config(tiny_llama_profile, {})


def test_pattern_lookup_agrees_with_peft_on_random_pattern_sets():
    """Our fast rank_pattern lookup (dict lookups for plain names) against PEFT's own get_pattern_key."""
    import random
    import re

    from peft.utils.other import get_pattern_key

    from lora_planner.adapter_config import _pattern_value

    rng = random.Random(0)
    keys = [f"model.layers.{l}.self_attn.{m}" for l in range(12) for m in ("q_proj", "v_proj", "k_proj")]
    keys += ["bert.encoder.layer.3.attention.self.query", "x.q_proj"]
    pool = [re.escape(k) for k in keys] + ["q_proj", "v_proj", r"layers\.3\.self_attn\.q_proj", "layers.3.self_attn.q_proj",
                                           r".*\.q_proj", r"self_attn\.v_proj", "k_pro", "q-proj", r"layer\.3\.", "query"]
    for _ in range(2000):
        pats = {p: rng.randint(1, 64) for p in rng.sample(pool, rng.randint(0, 12))}
        for k in keys:
            hit = get_pattern_key(list(pats), k)
            assert _pattern_value(pats, k, -1) == pats.get(hit, -1), (pats, k)
