import json

import pytest

from lora_planner import LoraPlannerError, load_profile, shipped_models
from lora_planner.profile import SCHEMA_VERSION, parse_conditions, shipped_conditions, shipped_profile


def test_every_shipped_model_named_in_the_issue_has_a_profile():
    wanted = {"llama-2-7b", "llama-3-8b", "mistral-7b", "tinyllama-1.1b", "qwen2.5-0.5b", "qwen2.5-7b", "phi-3-mini",
              "gpt2", "roberta-large", "all-minilm-l6-v2"}
    assert wanted <= set(shipped_models())


def test_shipped_profiles_state_their_conditions_and_validation(llama7b):
    c = llama7b.conditions
    assert (c["batch_size"], c["seq_len"], c["dtype"], c["optimizer"]) == (1, 512, "bf16", "adamw")
    assert c["gradient_checkpointing"] is False
    assert llama7b.validation["n"] >= 10
    assert llama7b.validation["max_abs_rel_error"] < 0.05


def test_profile_round_trips_through_json(llama7b, tmp_path):
    llama7b.save(tmp_path / "p.json")
    again = load_profile(tmp_path / "p.json")
    assert again == llama7b


def _write(tmp_path, body):
    path = tmp_path / "p.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def test_truncated_profile_is_refused_with_a_fix(llama7b, tmp_path):
    text = json.dumps(llama7b.to_json())
    with pytest.raises(LoraPlannerError, match="truncated or damaged"):
        load_profile(_write(tmp_path, text[: len(text) // 2]))


def test_hand_edited_profile_fails_its_checksum(llama7b, tmp_path):
    body = llama7b.to_json()
    body["num_layers"] = 16
    with pytest.raises(LoraPlannerError, match="checksum"):
        load_profile(_write(tmp_path, body))


def test_other_schema_version_is_refused(llama7b, tmp_path):
    body = llama7b.to_json()
    body["schema_version"] = 99
    with pytest.raises(LoraPlannerError, match=f"schema_version must be {SCHEMA_VERSION}"):
        load_profile(_write(tmp_path, body))


def test_unknown_keys_are_listed(llama7b, tmp_path):
    body = llama7b.to_json()
    body["colour"] = "blue"
    with pytest.raises(LoraPlannerError, match="colour"):
        load_profile(_write(tmp_path, body))


def test_every_condition_set_of_a_shipped_model_sees_the_same_modules():
    """Names, shapes, forward order and input groups are the model's, whatever the levers: gpt2@gc.json once put
    mlp.c_fc in attn.c_attn's group and tinyllama-1.1b@nf4+gc.json mlp.down_proj in q_proj's (block discovery read
    ids of freed storages)."""
    for name, sets in shipped_conditions().items():
        seen = {c: shipped_profile(name, *parse_conditions(c)[0]).modules for c in sets}
        assert len(set(seen.values())) == 1, (name, {c: [m.group for m in mods] for c, mods in seen.items()})
