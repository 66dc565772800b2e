"""History row 0 (the starting teacher and labels) is written once per run, also when the run is killed and
resumed inside epoch 1 (the resumed teacher has trained: validating it again would overwrite the start)."""

from recipe_utils import history
from test_reliability import ok, run, teacher  # noqa: F401 (the teacher fixture)


def test_resume_inside_epoch_one_keeps_history_row_zero(minivox_ci, teacher, tmp_path):  # noqa: F811
    out = str(tmp_path / "ssrl")
    extra = ["--validate_every=1", "--valid_trials=" + str(tmp_path / "ssrl" / "save" / "veri_test2.txt")]
    p1 = run(out, minivox_ci, teacher, *extra, faults={"FAULT_KILL_AT": "1:4"})
    assert p1.returncode == -9, p1.log[-3000:]
    row0 = history(out)[0]
    assert row0["epoch"] == "0" and row0["eer"] != ""
    ok(run(out, minivox_ci, teacher, *extra))
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert {k: rows[0][k] for k in row0} == row0  # (later rows add columns, blank in row 0)
