"""GPT-NeoX's parallel attention and MLP (x + attn(ln1 x) + mlp(ln2 x)): backward walks each branch on its
own, so the lowest block's traversal terms of the two branches add up (issue: the max rule that holds for
sequential blocks under-predicted such a model by 2 MiB in 3 of 8 assignments)."""
import dataclasses
import itertools
import json

import numpy as np
import pytest

from lora_planner.memory import predict_tensor_bytes
from lora_planner.profiling import profile_model
from lora_planner.profiling.build import load_config
from lora_planner.profiling.trace import trace_assignment
from lora_planner.solvers import SOLVERS, build_problem, get_solver

QKV, DENSE, UP, DOWN = "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"


def neox(tmp_path_factory, parallel: bool):
    config = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 256,
              "num_hidden_layers": 4, "num_attention_heads": 2, "vocab_size": 512, "max_position_embeddings": 128,
              "use_parallel_residual": parallel, "rotary_pct": 0.25, "tie_word_embeddings": False}
    path = tmp_path_factory.mktemp("neox") / "config.json"
    path.write_text(json.dumps(config))
    return path, profile_model(str(path), batch_size=2, seq_len=32, dtype="fp32", validate=4, name="neox", workers=1)


@pytest.fixture(scope="module")
def parallel_neox(tmp_path_factory):
    return neox(tmp_path_factory, parallel=True)


@pytest.fixture(scope="module")
def sequential_neox(tmp_path_factory):
    return neox(tmp_path_factory, parallel=False)


def branch(profile, name):
    return profile.module(name).branch


def test_the_profiler_finds_the_parallel_branches_and_only_where_they_are(parallel_neox, sequential_neox):
    par, seq = parallel_neox[1], sequential_neox[1]
    assert branch(par, QKV) != branch(par, UP)
    assert branch(seq, QKV) == branch(seq, UP)
    probe = {tuple(r["groups"]): r for r in par.conditions["branches"]}
    assert probe[(QKV, UP)]["parallel"] is True
    assert probe[(QKV, UP)]["measured"] == probe[(QKV, UP)]["sum_rule"]  # the sum of the two traversals, to the byte


LOWEST_HOLDS_BOTH = [{(1, QKV): 8, (1, UP): 4, (2, DOWN): 1, (3, QKV): 8, (3, DOWN): 1},
                     {(3, DENSE): 32, (3, QKV): 8, (3, DOWN): 2, (3, UP): 2},
                     {(0, QKV): 16, (0, UP): 16, (2, DENSE): 2, (3, UP): 4}]


def test_assignments_with_both_branches_in_the_lowest_block_are_not_under_predicted(parallel_neox):
    path, prof = parallel_neox
    config = load_config(str(path))
    one_branch = dataclasses.replace(prof, modules=tuple(dataclasses.replace(m, branch=0) for m in prof.modules))
    worst_old = 0.0
    for a in LOWEST_HOLDS_BOTH:
        real = max(trace_assignment(config, "causal-lm", "fp32", prof.layer_prefix, a, 2, 32, method="measured").values())
        assert (predict_tensor_bytes(prof, a) - real) / real > -0.005
        worst_old = min(worst_old, (predict_tensor_bytes(one_branch, a) - real) / real)
    assert worst_old < -0.005  # the max rule over one branch does under-predict these: the test can fail


@pytest.mark.parametrize("name", [n for n, e in SOLVERS.items() if e.obj.exact and e.available()])
def test_exact_solvers_stay_exact_with_two_branches(parallel_neox, name):
    prof = parallel_neox[1]
    problem = build_problem(prof, (QKV, UP), (2, 8), unit=256)
    keys = [(l, m) for l in range(prof.num_layers) for m in problem.targets]
    candidates = []
    for choice in itertools.product((None,) + problem.ranks, repeat=len(keys)):  # 3^8 assignments
        a = {k: r for k, r in zip(keys, choice) if r}
        if a:
            candidates.append((a, problem.cost(a).max(), problem.objective(a)))
    lo, hi = min(c for _, c, _ in candidates), max(c for _, c, _ in candidates)
    caps = [int(lo + (hi - lo) * f) for f in (0.0, 0.2, 0.5, 0.8, 1.0)]
    sols = get_solver(name).solve(problem, caps, [], seq_len=32, batch=2, seed=0)
    for cap, sol in zip(caps, sols):
        best = max(v for _, c, v in candidates if c <= cap)
        assert sol.objective == pytest.approx(best, rel=1e-7, abs=1e-9)
        units = problem.cost(sol.assignment)
        assert np.all(units <= cap)
        assert units.max() * problem.unit >= predict_tensor_bytes(prof, sol.assignment)  # never charges less


def test_a_sequential_block_stays_one_branch(tiny_llama_profile, sequential_neox):
    for prof in (tiny_llama_profile, sequential_neox[1]):
        assert {m.branch for m in prof.modules} == {0}
