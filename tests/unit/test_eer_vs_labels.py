"""bench/eer_vs_labels.py: the EER-against-label-NMI fit, the seed groups and the paired prediction, on
results.json folders written here with known numbers."""

import json

import pytest


def _folder(tmp_path, name, seed, systems, corpus="MiniVox (demo, corpus seed 0)", start="spectral clustering"):
    """A run_experiments.py-shaped results.json: systems = {key: (nmi or None, eer)}."""
    entries = {}
    for key, (nmi, eer) in systems.items():
        entries[key] = {"label": key, "labels": None if nmi is None else {"nmi": nmi, "purity": nmi - 0.2, "n_clusters": 200},
                        "test": {"eer": eer, "eer_se": 1.0}, "reclustered": {"nmi": None if nmi is None else nmi - 0.01}}
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"corpus": {"name": corpus}, "test_list": "veri_test2", "train_seed": seed,
                                                "start": start, "systems": entries}))
    return str(d)


def line_eer(nmi):  # the exact line the points below lie on (EER falls 0.5 points per +0.01 NMI)
    return 60.0 - 50.0 * nmi


def test_fit_groups_and_pair(tmp_path, bench_script):
    mod = bench_script("eer_vs_labels")
    f1 = _folder(tmp_path, "a", 1, {"dino": (None, 30.0), "supervised": (1.0, 8.0), "iterative_r1": (0.66, line_eer(0.66)),
                                    "iterative_r5": (0.745, line_eer(0.745) - 0.4), "ssrl": (0.76, line_eer(0.76))})
    f2 = _folder(tmp_path, "b", 2, {"iterative_r1": (0.67, line_eer(0.67)), "iterative_r5": (0.745, line_eer(0.745) + 0.4),
                                    "ssrl": (0.75, line_eer(0.75))})
    dup = _folder(tmp_path, "c", 2, {"ssrl_copy": (0.75, line_eer(0.75))})  # a byte-identical rerun: counted once
    bench = _folder(tmp_path, "d", 1, {"ssrl": (0.95, 10.0)}, start="DIAGNOSTIC start (label-correction bench)")
    out = tmp_path / "o.json"
    res = mod.main([f1, f2, dup, bench, "--group", f"SSRL={f1}:ssrl,{f2}:ssrl",
                         "--group", f"round 5={f1}:iterative_r5,{f2}:iterative_r5", "--pair", "SSRL", "round 5",
                         "--out", str(out), "--plot", str(tmp_path / "p.png")])
    assert res["n_points"] == 6  # DINO (no labels), the supervised ceiling, the duplicate and the bench are left out
    assert res["fit"]["slope"] == pytest.approx(-50.0, abs=1e-6)  # the +-0.4 residuals at one NMI cancel
    assert res["seed_spread"]["round 5"]["mean_residual"] == pytest.approx(0.0, abs=1e-9)
    assert res["seed_spread"]["SSRL"]["sd"] == pytest.approx(abs(line_eer(0.76) - line_eer(0.75)) / 2 ** 0.5)
    pair = res["pair"]["per_seed"]
    assert [p["seed"] for p in pair] == ["1", "2"]
    assert pair[0]["nmi_diff"] == pytest.approx(0.015) and pair[0]["predicted_eer_diff"] == pytest.approx(-0.75)
    assert pair[0]["eer_diff"] == pytest.approx(-0.35) and pair[1]["eer_diff"] == pytest.approx(-0.65)
    assert json.loads(out.read_text())["pair"]["mean_eer_diff"] == pytest.approx(-0.5)
    assert (tmp_path / "p.png").stat().st_size > 0
    with_bench = mod.main([f1, f2, bench, "--benches"])
    assert with_bench["n_points"] == 8 and sum(p["bench"] for p in with_bench["points"]) == 2
    by_purity = mod.main([f1, f2, "--x", "purity", "--group", f"SSRL={f1}:ssrl,{f2}:ssrl"])
    assert by_purity["fit"]["x"] == "purity" and by_purity["fit"]["slope"] == pytest.approx(-50.0, abs=1e-6)


def test_refusals_name_the_problem(tmp_path, bench_script):
    mod = bench_script("eer_vs_labels")
    f1 = _folder(tmp_path, "a", 1, {"ssrl": (0.7, 25.0)})
    f2 = _folder(tmp_path, "b", 1, {"ssrl": (0.7, 25.0)}, corpus="MiniVox (demo, corpus seed 1)")
    with pytest.raises(SystemExit, match="corpus"):
        mod.main([f1, f2])
    with pytest.raises(SystemExit, match="results.json does not exist"):
        mod.main([str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="needs 3 or more"):
        mod.main([f1])
    f3 = _folder(tmp_path, "c", 2, {"ssrl": (0.72, 24.0), "iterative_r5": (0.71, 24.4)})
    with pytest.raises(SystemExit, match="not among the points"):
        mod.main([f1, f3, "--group", f"x={f1}:ssrl,{f3}:nope"])
    with pytest.raises(SystemExit, match="not a --group name"):
        mod.main([f1, f3, "--group", f"x={f1}:ssrl,{f3}:ssrl", "--pair", "x", "y"])
