"""`profile --conditions`: several condition sets of one model in one run (one pool of trace workers)."""
import dataclasses
import json
import math

import pytest

from lora_planner.cli.main import main
from lora_planner.memory import evaluate, predict_phases
from lora_planner.profile import load_profile, parse_conditions
from lora_planner.profiling import profile_conditions, profile_model
from lora_planner.profiling.fit import random_assignments


def _terms_equal(a, b) -> bool:
    """Equal up to the least-squares solve's rounding: LAPACK's last bits depend on its buffers' alignment, so two
    solves of the same traces may differ by ~1e-12 relative (numpy#8404; seen once in the full suite). Compared as
    bytes (terms evaluated at a shape), within a thousandth of a byte: a real difference (a set fitted on another
    set's traces) moves terms by whole bytes."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_terms_equal(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and _terms_equal(dataclasses.asdict(a), dataclasses.asdict(b))
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-3)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_condition_lists_parse_and_bad_ones_are_one_line():
    assert parse_conditions("all") == [(False, None), (True, None), (False, "nf4"), (True, "nf4"), (False, "int8"),
                                       (True, "int8")]
    assert parse_conditions("plain,gc,nf4+gc,gc") == [(False, None), (True, None), (True, "nf4")]
    assert parse_conditions("gradient-checkpointing+int8") == [(True, "int8")]
    for bad in ("nf4+int8", "gc+gc", "fp8", "", "plain+gc"):
        with pytest.raises(Exception, match="--conditions must be"):
            parse_conditions(bad)


@pytest.mark.parametrize("workers", [2, 1])
def test_one_run_makes_the_same_profiles_as_one_run_each(tiny_llama_path, workers):
    """Sharing the workers, the sets pipelined through them (or in-process), changes nothing: each set's terms
    and validation equal a run of its own."""
    kw = dict(batch_size=2, seq_len=32, dtype="fp32", validate=3, workers=workers)
    both = profile_conditions(str(tiny_llama_path), "plain,gc", **kw)
    assert list(both) == ["plain", "gradient-checkpointing"]
    for (name, prof), ckpt in zip(both.items(), (False, True)):
        alone = profile_model(str(tiny_llama_path), gradient_checkpointing=ckpt, **kw)
        assert prof.checkpointed is ckpt and prof.phases.keys() == alone.phases.keys()
        assert prof.modules == alone.modules  # input groups too (once, a freed storage's id came back: build.discover)
        # ... and predicts the same bytes: its terms at the fitted shape and two others; every module of one layer,
        # each layer, and 20 random plans
        plans = [{(layer, m): 8 for m in prof.module_names} for layer in range(prof.num_layers)]
        plans += random_assignments(prof.module_names, prof.num_layers, 20, 3)
        for shape in ((2, 32), (1, 16), (4, 48)):
            assert _terms_equal(evaluate(prof, *shape), evaluate(alone, *shape))
            assert [predict_phases(prof, a, *shape) for a in plans] == [predict_phases(alone, a, *shape) for a in plans]
        rows = lambda p: [(r["measured_bytes"], r["predicted_bytes"]) for r in p.validation["rows"]]  # noqa: E731
        assert rows(prof) == rows(alone)
        assert prof.validation["seconds"] > 0  # its share of the run's time


def test_the_cli_writes_one_file_per_set_in_the_shipped_layout(tiny_llama_path, tmp_path, capsys):
    out = tmp_path / "profiles"
    code, stdout, _ = run(capsys, "profile", str(tiny_llama_path), "--conditions", "plain,gc", "--batch-size", "2",
                          "--seq-len", "32", "--dtype", "fp32", "--validate", "2", "--name", "tiny", "-o", str(out))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny@gc.json"]
    assert load_profile(out / "tiny@gc.json").checkpointed and not load_profile(out / "tiny.json").checkpointed
    assert "condition set" in stdout and "tiny@gc.json" in stdout


def test_conditions_errors_are_one_line_exit_2_and_write_nothing(tiny_llama_path, tmp_path, capsys):
    afile = tmp_path / "a.json"
    afile.write_text(json.dumps({}))
    cases = [(["--conditions", "nf4+int8", "-o", str(tmp_path / "x")], "--conditions must be"),
             (["--conditions", "gc", "--gradient-checkpointing", "-o", str(tmp_path / "x")], "not combined"),
             (["--conditions", "plain", "-o", str(afile)], "a folder with --conditions"),
             (["--conditions", "plain"], "-o/--output must be a folder")]
    for args, message in cases:
        code, _, err = run(capsys, "profile", str(tiny_llama_path), *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    # over the tolerance in one set: nothing is written, and the error names the set
    code, _, err = run(capsys, "profile", str(tiny_llama_path), "--conditions", "plain,gc", "--batch-size", "2", "--seq-len",
                       "32", "--dtype", "fp32", "--validate", "2", "--tolerance", "-1", "-o", str(tmp_path / "y"))
    assert code == 2 and "gradient-checkpointing" in err and not (tmp_path / "y").exists()
