"""recipes/VoxCeleb/SSRL/summarize_seeds.py: one table over training seeds from finished run_experiments folders."""

import json
import os
import sys

import numpy as np
import pytest

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "VoxCeleb", "SSRL")


@pytest.fixture()
def sm():
    sys.path.insert(0, RECIPE)
    try:
        import summarize_seeds
    finally:
        sys.path.remove(RECIPE)
    return summarize_seeds


def _trials():
    return [(f"id{k % 7:02d}/v/1.wav", f"id{(k * 3 + 2) % 7:02d}/w/2.wav", int(k % 2 == 0)) for k in range(280)]


def _run_folder(root, seed, systems, corpus="MiniVox (demo, corpus seed 0)", rng=None, start="k-means (K0 = 20)"):
    """A finished run_experiments.py folder: results.json + eval/<system>/scores_veri_test2.txt (gap = class separation)."""
    rng = rng or np.random.default_rng(seed)
    folder = root / f"km{seed}"
    entries = {}
    for name, (nmi, gap) in systems.items():
        d = folder / "eval" / name
        d.mkdir(parents=True)
        with open(d / "scores_veri_test2.txt", "w") as f:
            f.writelines(f"{a} {b} {lab} {rng.normal(gap * lab, 1.0):.5f}\n" for a, b, lab in _trials())
        from speechbrain_ssrl.scoring import eer_of_trials, read_score_file

        _, _, lab, sc = read_score_file(str(d / "scores_veri_test2.txt"))
        entries[name] = {"label": name, "test": {"eer": eer_of_trials(sc, lab), "eer_se": 1.0},
                         "labels": None if nmi is None else {"nmi": nmi, "purity": nmi / 2, "n_clusters": 20,
                                                             "max_speakers_per_home": 2},
                         "labels_start": None if nmi is None else {"nmi": 0.5},
                         "reclustered": None if nmi is None else {"nmi": nmi - 0.01, "n_clusters": 20}}
    res = {"train_seed": str(seed), "systems": entries, "test_list": "veri_test2", "start": start,
           "corpus": {"name": corpus, "data_folder": "/d"}, "command": "python run_experiments.py ...",
           "git": {"commit": "abc", "dirty": False}, "finished": "2026-11-30T00:00:00"}
    (folder / "results.json").write_text(json.dumps(res))
    return str(folder)


def test_table_over_seeds_means_and_paired_differences(tmp_path, sm):
    from speechbrain_ssrl.scoring import paired_eer_difference, paired_eer_difference_over_seeds

    f1 = _run_folder(tmp_path, 1986, {"ssrl": (0.70, 1.2), "iterative_r5": (0.66, 0.8), "v": (0.71, 1.3), "dino": (None, 0.5)})
    f2 = _run_folder(tmp_path, 1987, {"ssrl": (0.68, 1.1), "iterative_r5": (0.69, 0.9)})
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- seeds:start -->\nold\n<!-- seeds:end -->\nrest\n")
    mfcc = os.path.join(f1, "eval", "iterative_r5", "scores_veri_test2.txt")  # any score file of the same trials
    summ = sm.main(["--out", str(tmp_path / "out"), "--reference", "SSRL", "--row", f"SSRL={f1}:ssrl,{f2}:ssrl",
                    "--row", f"Round 5={f1}:iterative_r5,{f2}:iterative_r5", "--row", f"V (L = 1)={f2}:ssrl,{f1}:v",
                    "--fixed", f"MFCC={mfcc}", "--update_readme", "--readme_marker", "seeds", "--readme_file", str(readme)])
    r5 = summ["rows"]["Round 5"]
    assert r5["mean"]["nmi"] == pytest.approx((0.66 + 0.69) / 2)
    v = r5["vs_reference"]
    assert v["seeds"] == ["1986", "1987"] and v["nmi_diff"] == pytest.approx([-0.04, 0.01])
    # the representation's labels (a fresh k-means of the final model's training embeddings) beside the trained-on ones
    assert r5["mean"]["reclustered_nmi"] == pytest.approx((0.65 + 0.68) / 2)
    assert v["reclustered_nmi_diff"] == pytest.approx([-0.04, 0.01])
    pairs = [(os.path.join(f, "eval", s, "scores_veri_test2.txt"), os.path.join(f, "eval", "ssrl", "scores_veri_test2.txt"))
             for f, s in ((f1, "iterative_r5"), (f2, "iterative_r5"))]
    d, se, per = paired_eer_difference_over_seeds(pairs)
    assert (v["eer_diff"], v["eer_diff_se"]) == pytest.approx((d, se)) and v["eer_diff_per_seed"] == pytest.approx(per)
    assert per[0] == pytest.approx(paired_eer_difference(*pairs[0])[0])
    assert v["holds"] == bool(abs(d) > 2 * se) and v["same_sign_every_seed"] == bool(per[0] * per[1] > 0)
    # a row may take each seed from another folder / system; the MFCC-like fixed row pairs with every reference seed
    assert summ["rows"]["V (L = 1)"]["seeds"]["1987"]["source"].endswith("km1987:ssrl")
    assert summ["rows"]["V (L = 1)"]["vs_reference"]["eer_diff_per_seed"][1] == pytest.approx(0.0, abs=1e-12)  # itself
    assert summ["rows"]["MFCC"]["vs_reference"]["seeds"] == ["1986", "1987"]
    # a reference without labels (a DINO-like row): NMI differences are empty, EER differences are not
    summ2 = sm.main(["--out", str(tmp_path / "out2"), "--reference", "DINO", "--row", f"DINO={f1}:dino", "--row", f"SSRL={f1}:ssrl"])
    assert summ2["rows"]["SSRL"]["vs_reference"]["nmi_diff"] == [None] and summ2["rows"]["SSRL"]["vs_reference"]["eer_diff"] < 0
    md2 = (tmp_path / "out2" / "summary.md").read_text()
    assert "| DINO | 1986 | - | - |" in md2 and "| SSRL | 1986 | 0.500 → 0.700 | 0.700 | 0.350 | 20 | 2 | 0.690 | " in md2
    assert "| SSRL | 1986 | - | - | " in md2  # against DINO: no trained-on or re-clustered labels to subtract
    text = readme.read_text()
    assert text.startswith("intro\n<!-- seeds:start -->\n### Over training seeds") and text.endswith("<!-- seeds:end -->\nrest\n")
    assert "| Round 5 | 1986, 1987 | 0.500 → 0.660 / 0.500 → 0.690 | 0.675 |" in text and "old\n" not in text
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# Over training seeds")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reference"] == "SSRL"
    assert (tmp_path / "seeds" / "summary.json").read_text() == (tmp_path / "out" / "summary.json").read_text()


def test_refusals_name_the_row_and_the_fix(tmp_path, sm):
    f1 = _run_folder(tmp_path, 1986, {"ssrl": (0.7, 1.0)})
    f2 = _run_folder(tmp_path / "other", 1987, {"ssrl": (0.7, 1.0)}, corpus="MiniVox (demo, corpus seed 1)")
    out = ["--out", str(tmp_path / "o"), "--reference", "SSRL"]
    with pytest.raises(SystemExit, match="write NAME=FOLDER:SYSTEM"):
        sm.main(out + ["--row", f"SSRL={f1}"])
    with pytest.raises(SystemExit, match="has no system 'iterative_r5'"):
        sm.main(out + ["--row", f"SSRL={f1}:iterative_r5"])
    with pytest.raises(SystemExit, match="two sources for training seed 1986"):
        sm.main(out + ["--row", f"SSRL={f1}:ssrl,{f1}:ssrl"])
    with pytest.raises(SystemExit, match="different corpora"):
        sm.main(out + ["--row", f"SSRL={f1}:ssrl,{f2}:ssrl"])
    with pytest.raises(SystemExit, match="does not exist"):
        sm.main(out + ["--row", f"SSRL={tmp_path}/none:ssrl"])
    (tmp_path / "r.md").write_text("no markers")
    with pytest.raises(SystemExit, match="has no section"):
        sm.main(out + ["--row", f"SSRL={f1}:ssrl", "--update_readme", "--readme_marker", "x", "--readme_file", str(tmp_path / "r.md")])
    assert not (tmp_path / "o").exists()  # refused before anything was written
    os.remove(os.path.join(f1, "eval", "ssrl", "scores_veri_test2.txt"))
    with pytest.raises(SystemExit, match="scores_veri_test2.txt does not exist"):
        sm.main(out + ["--row", f"SSRL={f1}:ssrl"])
    with pytest.raises(SystemExit):  # the reference must be a --row
        sm.main(["--out", str(tmp_path / "o"), "--reference", "B", "--row", f"SSRL={f1}:ssrl"])


def test_rows_may_differ_in_start_but_not_their_seeds(tmp_path, sm):
    """Two clustering methods of one DINO teacher are two rows with their own starts, listed per row; the seeds of
    one row must share one start."""
    km = _run_folder(tmp_path / "km", 1986, {"ssrl": (0.69, 1.0)})
    sp = _run_folder(tmp_path / "sp", 1986, {"ssrl": (0.74, 1.2)}, start="spectral clustering (10-NN graph) (K0 = 20)")
    sp2 = _run_folder(tmp_path / "sp", 1987, {"ssrl": (0.73, 1.2)}, start="spectral clustering (10-NN graph) (K0 = 20)")
    out = tmp_path / "o"
    sm.main(["--out", str(out), "--reference", "SP", "--row", f"SP={sp}:ssrl,{sp2}:ssrl", "--row", f"KM={km}:ssrl"])
    summ = json.loads((out / "summary.json").read_text())
    assert summ["start"] is None and summ["starts"] == {"SP": "spectral clustering (10-NN graph) (K0 = 20)",
                                                         "KM": "k-means (K0 = 20)"}
    assert ("starts (they differ between rows): spectral clustering (10-NN graph) (K0 = 20) (SP); k-means (K0 = 20) (KM)"
            in (out / "summary.md").read_text())
    assert summ["rows"]["KM"]["vs_reference"]["seeds"] == ["1986"]
    with pytest.raises(SystemExit, match="'MIX': its seeds' folders use different starts"):
        sm.main(["--out", str(tmp_path / "o2"), "--reference", "MIX", "--row", f"MIX={km}:ssrl,{sp2}:ssrl"])


def test_a_table_of_one_row_has_no_empty_comparison(tmp_path, sm):
    f1 = _run_folder(tmp_path, 1986, {"ssrl": (0.70, 1.2), "iterative_r5": (0.66, 0.8)})
    md = sm.summary_markdown(sm.summarize({"SSRL": sm.load_row("SSRL", [(f1, "ssrl")])}, "SSRL"),
                             "One row", "python summarize_seeds.py ...")
    assert "| SSRL | 1986 | 0.500 → 0.700 |" in md
    assert "Against" not in md and "NMI − reference" not in md
    assert "No other row shares a training seed with **SSRL**: no paired comparison." in md
    # with a second row the comparison table is there
    two = {"SSRL": sm.load_row("SSRL", [(f1, "ssrl")]), "Round 5": sm.load_row("Round 5", [(f1, "iterative_r5")])}
    md2 = sm.summary_markdown(sm.summarize(two, "SSRL"), "Two rows", "python summarize_seeds.py ...")
    assert "Against **SSRL**, seed by seed" in md2 and "| Round 5 | 1986 | -0.040 |" in md2 and "No other row" not in md2
