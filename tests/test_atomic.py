"""One atomic writer: folders are written as a unit and a torn or edited one is refused with one line."""
import json

import pytest

from lora_planner.atomic import read_dir_verified, write_dir_atomic, write_json_atomic
from lora_planner.errors import LoraPlannerError


def _write_two(tmp):
    (tmp / "a.json").write_text(json.dumps({"x": 1}))
    (tmp / "b.bin").write_bytes(b"\x00\x01\x02")


def test_a_folder_written_as_a_unit_reads_back_verified(tmp_path):
    write_dir_atomic(tmp_path / "state", _write_two)
    manifest = read_dir_verified(tmp_path / "state")
    assert set(manifest["files"]) == {"a.json", "b.bin"}
    assert not list(tmp_path.glob(".state.*")), "no temp folder left behind"


def test_rewriting_a_folder_replaces_it_whole(tmp_path):
    write_dir_atomic(tmp_path / "state", _write_two)
    write_dir_atomic(tmp_path / "state", lambda tmp: (tmp / "c.txt").write_text("new"))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["c.txt", "manifest.json"]


@pytest.mark.parametrize("tear", ["edit", "delete", "add"])
def test_a_torn_or_edited_folder_is_refused_with_one_line(tmp_path, tear):
    d = tmp_path / "state"
    write_dir_atomic(d, _write_two)
    if tear == "edit":
        (d / "a.json").write_text(json.dumps({"x": 2}))
    elif tear == "delete":
        (d / "b.bin").unlink()
    else:
        (d / "stray.txt").write_text("?")
    with pytest.raises(LoraPlannerError) as err:
        read_dir_verified(d)
    assert "\n" not in str(err.value) and ("checksum" in str(err.value) or "manifest" in str(err.value))


def test_a_crash_inside_the_writer_leaves_the_old_folder_and_no_temp(tmp_path):
    d = tmp_path / "state"
    write_dir_atomic(d, _write_two)

    def crash(tmp):
        (tmp / "half.json").write_text("{")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_dir_atomic(d, crash)
    read_dir_verified(d)  # the old one, intact
    assert not list(tmp_path.glob(".state.*"))


def test_json_writes_are_whole(tmp_path):
    write_json_atomic(tmp_path / "x" / "p.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "x" / "p.json").read_text()) == {"a": [1, 2]}
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["p.json"]
