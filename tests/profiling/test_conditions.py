"""`profile --conditions`: several condition sets of one model in one run (one pool of trace workers)."""
import json

import pytest

from lora_planner.cli.main import main
from lora_planner.profile import load_profile, parse_conditions
from lora_planner.profiling import profile_conditions, profile_model


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
        assert prof.phases == alone.phases and prof.checkpointed is ckpt
        assert [r["measured_bytes"] for r in prof.validation["rows"]] == [r["measured_bytes"] for r in alone.validation["rows"]]
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
