"""One contract for every solver in the registry, on the tiny Llama profile (4 blocks)."""
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_planner import LoraPlannerError
from lora_planner.fleet import ClientSpec
from lora_planner.memory import predict_tensor_bytes
from lora_planner.plan import minimum_budget, plan_fleet
from lora_planner.solvers import SOLVERS, build_problem, get_solver

TARGETS = ("self_attn.q_proj", "self_attn.v_proj")
RANKS = (2, 8)
EXACT = [n for n, e in SOLVERS.items() if e.obj.exact and e.available()]


@pytest.fixture(scope="module")
def problem(tiny_llama_profile):
    return build_problem(tiny_llama_profile, TARGETS, RANKS, unit=256)


def brute_force(problem, cap):
    """Every assignment of {none, 2, 8} to each (layer, target): 3^8 = 6,561 candidates."""
    best = 0.0
    keys = [(l, m) for l in range(problem.num_layers) for m in problem.targets]
    for choice in itertools.product((None,) + problem.ranks, repeat=len(keys)):
        a = {k: r for k, r in zip(keys, choice) if r}
        if a and np.all(problem.cost(a) <= cap):
            best = max(best, problem.objective(a))
    return best


def capacities(problem):
    lo = int(problem.base(problem.num_layers - 1).max())
    hi = int(problem.cost({(l, m): 8 for l in range(4) for m in TARGETS}).max())
    return [lo + (hi - lo) * f // 10 for f in (1, 3, 5, 7, 9, 11)]


@pytest.mark.parametrize("name", EXACT)
def test_exact_solvers_equal_brute_force(problem, name):
    caps = capacities(problem)
    sols = get_solver(name).solve(problem, caps, [], seq_len=32, batch=2, seed=0)
    for cap, sol in zip(caps, sols):
        assert sol.objective == pytest.approx(brute_force(problem, cap), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_plan_fits_its_budget(tiny_llama_profile, name):
    if not SOLVERS[name].available():
        pytest.skip(f"{name} not installed")
    low = minimum_budget(build_problem(tiny_llama_profile, TARGETS, RANKS, unit=256))
    clients = [ClientSpec(f"c{i}", int(low * f)) for i, f in enumerate((1.0, 1.05, 1.2, 1.5, 3.0))]
    plan = plan_fleet(tiny_llama_profile, clients, solver=name, target_modules=TARGETS, ranks=RANKS, unit_bytes=256)
    for c in plan.clients:
        if c.status == "planned":
            assert c.entries, "never an empty plan"
            assert c.predicted_bytes <= c.budget_bytes
            assert predict_tensor_bytes(tiny_llama_profile, c.assignment) == c.predicted_tensor_bytes


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fracs=st.lists(st.floats(0.0, 1.2), min_size=1, max_size=3))
def test_exact_solvers_agree_with_each_other(problem, fracs):
    lo = int(problem.base(problem.num_layers - 1).max())
    hi = int(problem.cost({(l, m): 8 for l in range(4) for m in TARGETS}).max())
    caps = [int(lo + f * (hi - lo)) for f in fracs]
    results = {n: [s.objective for s in get_solver(n).solve(problem, caps, [], seq_len=32, batch=2, seed=0)] for n in EXACT}
    first = results[EXACT[0]]
    for n in EXACT[1:]:
        assert results[n] == pytest.approx(first, rel=1e-7, abs=1e-9), n


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.integers(0, 4000), b=st.integers(0, 4000))
def test_a_larger_budget_never_lowers_the_optimum(problem, a, b):
    lo = int(problem.base(problem.num_layers - 1).max())
    small, large = sorted((lo + a, lo + b))
    s, l_ = get_solver("knapsack").solve(problem, [small, large], [], seq_len=32, batch=2, seed=0)
    assert l_.objective >= s.objective - 1e-12


def test_uniform_gives_everyone_the_smallest_clients_rank(tiny_llama_profile):
    low = minimum_budget(build_problem(tiny_llama_profile, TARGETS, RANKS, unit=256))
    clients = [ClientSpec("tiny", low), ClientSpec("mid", int(low * 1.3)), ClientSpec("big", int(low * 3))]
    plan = plan_fleet(tiny_llama_profile, clients, solver="uniform", target_modules=TARGETS, ranks=RANKS, drop_infeasible=True, unit_bytes=256)
    ranks = {c.id: {e.rank for e in c.entries} for c in plan.clients if c.status == "planned"}
    assert len(set(map(frozenset, ranks.values()))) == 1
    het = plan_fleet(tiny_llama_profile, clients, solver="hetlora", target_modules=TARGETS, ranks=RANKS, drop_infeasible=True, unit_bytes=256)
    big = het.client("big")
    assert {e.rank for e in big.entries} == {8} and len(big.entries) == 8


def test_depth_rank_reports_time_and_bytes_with_ranks_rising_to_the_output(tiny_llama_profile):
    low = minimum_budget(build_problem(tiny_llama_profile, TARGETS, RANKS, unit=256))
    clients = [ClientSpec("slow", low * 3, throughput_flops=1e9, bandwidth_bytes=1e5), ClientSpec("fast", low * 3)]
    plan = plan_fleet(tiny_llama_profile, clients, solver="depth-rank", target_modules=TARGETS, ranks=RANKS, unit_bytes=256)
    for c in plan.clients:
        assert {"round_time_s", "bytes_up", "bytes_down", "deadline_s"} <= set(c.extras)
        assert c.extras["round_time_s"] <= c.extras["deadline_s"] + 1e-9
        by_layer = sorted((e.layer, e.rank) for e in c.entries)
        assert [r for _, r in by_layer] == sorted(r for _, r in by_layer)
        layers = sorted({e.layer for e in c.entries})
        assert layers == list(range(4 - len(layers), 4)), "depth counts from the output side"


def test_unknown_solver_suggests_the_nearest():
    with pytest.raises(LoraPlannerError, match="Did you mean 'knapsack'"):
        get_solver("knapsak")


def test_budget_below_fixed_cost_names_the_client_and_the_minimum(tiny_llama_profile):
    need = minimum_budget(build_problem(tiny_llama_profile, TARGETS, RANKS, unit=256))
    with pytest.raises(LoraPlannerError, match=r"memory budget of small must be at least"):
        plan_fleet(tiny_llama_profile, [ClientSpec("small", need - 1)], target_modules=TARGETS, ranks=RANKS, unit_bytes=256)
    plan = plan_fleet(tiny_llama_profile, [ClientSpec("small", need - 1), ClientSpec("ok", need)], target_modules=TARGETS,
                      ranks=RANKS, drop_infeasible=True, unit_bytes=256)
    assert [c.status for c in plan.clients] == ["dropped", "planned"]


def test_tabulated_and_scanned_lookups_agree(problem):
    from lora_planner.solvers.knapsack import KnapsackTables

    caps = capacities(problem) + [c + 7 for c in capacities(problem)]
    table = KnapsackTables(problem, max(caps), tabulate=True)
    scan = KnapsackTables(problem, max(caps), tabulate=False)
    for cap in caps:
        a, b = table.solve(cap), scan.solve(cap)
        assert a.status == b.status and a.objective == pytest.approx(b.objective)
        if a.status == "optimal":
            assert np.array_equal(a.cost, b.cost)


@pytest.mark.parametrize("name", EXACT)
def test_exact_solvers_equal_brute_force_with_top_block_terms(name):
    """all-MiniLM-L6-v2 at 2 x 128 has top-block terms (the peak's moment in the top block): every exact
    solver still finds the brute-force optimum of the same integer problem (2 modules x 6 blocks: 2^12)."""
    from lora_planner import shipped_profile

    prof = shipped_profile("all-minilm-l6-v2")
    problem = build_problem(prof, ("intermediate.dense", "output.dense"), (4,), batch=2, seq=128, unit=4096)
    assert problem.top.any()
    lo = int(problem.base(problem.num_layers - 1).max())
    hi = int(problem.cost({(l, m): 4 for l in range(6) for m in problem.targets}).max())
    caps = [lo + (hi - lo) * f // 10 for f in (2, 5, 8)]
    keys = [(l, m) for l in range(6) for m in problem.targets]
    sols = get_solver(name).solve(problem, caps, [], seq_len=128, batch=2, seed=0)
    for cap, sol in zip(caps, sols):
        best = 0.0
        for choice in itertools.product((None, 4), repeat=len(keys)):
            a = {k: r for k, r in zip(keys, choice) if r}
            if a and np.all(problem.cost(a) <= cap):
                best = max(best, problem.objective(a))
        assert sol.objective == pytest.approx(best, abs=1e-9)
        assert np.all(problem.cost(sol.assignment) <= cap)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_integer_problem_never_charges_less_than_the_memory_model(data):
    """Plans that fit the integer problem fit the memory model: every term is rounded up, and the top
    block's extra is bounded from above (clamped at 0, every top module pays its top_rank) -- on random
    assignments of all six all-MiniLM-L6-v2 modules, where top-block terms are non-zero."""
    from lora_planner import shipped_profile

    prof = shipped_profile("all-minilm-l6-v2")
    ranks = (1, 8, 64)
    problem = build_problem(prof, prof.module_names, ranks, batch=2, seq=128, unit=1024)
    keys = [(l, m) for l in range(prof.num_layers) for m in prof.module_names]
    chosen = data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=len(keys), unique=True))
    a = {k: data.draw(st.sampled_from(ranks)) for k in chosen}
    assert problem.cost(a).max() * problem.unit >= predict_tensor_bytes(prof, a, 2, 128)


@pytest.mark.parametrize("shape", [{"batch_size": 0}, {"seq_len": 0}, {"batch_size": -2}])
def test_a_zero_or_negative_shape_is_refused_not_replaced_by_the_profiles(tiny_llama_profile, shape):
    """plan_fleet(batch_size=0) used to plan silently at the profile's batch; predict_tensor_bytes refuses 0, so must it."""
    name = next(iter(shape))
    with pytest.raises(LoraPlannerError, match=f"^{name} must be a positive whole number"):
        plan_fleet(tiny_llama_profile, [ClientSpec("c0", 2**34)], target_modules=TARGETS, ranks=RANKS, **shape)


@pytest.mark.parametrize("registry_path", ["lora_planner.solvers:SOLVERS", "lora_planner.aggregation:AGGREGATORS",
                                           "lora_planner.importance:SCORES", "lora_planner.federated:BACKENDS"])
def test_every_plugin_kind_shares_one_registry_type_that_suggests_the_nearest_name(registry_path):
    import importlib

    from lora_planner.registry import Plugin, Registry

    module, attr = registry_path.split(":")
    registry = getattr(importlib.import_module(module), attr)
    assert isinstance(registry, Registry) and all(isinstance(p, Plugin) and p.summary for p in registry.values())
    first = next(iter(registry))
    with pytest.raises(LoraPlannerError, match=f"^{registry.parameter} must be a known .*Did you mean '{first}'"):
        registry.get(first + "x")


def test_a_time_limit_that_is_not_positive_is_refused_by_name(tiny_llama_profile, capsys):
    with pytest.raises(LoraPlannerError, match="^time_limit must be a positive number of seconds"):
        plan_fleet(tiny_llama_profile, [ClientSpec("c0", 2**34)], solver="cpsat", target_modules=TARGETS, ranks=RANKS,
                   time_limit=0)
    from lora_planner.cli.main import main

    assert main(["solve", "--model", "llama-2-7b", "--memory-budget", "16GiB", "--solver", "milp", "--time-limit", "-1"]) == 2
    assert capsys.readouterr().err.startswith("lora-planner solve: error: --time-limit must be a positive number")
