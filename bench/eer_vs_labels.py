"""How much test EER does better pseudo-label quality buy? An offline reading of finished run_experiments.py folders
(issue #13: SSRL's labels end above the iterative baseline's round 5, yet its test EER only ties it).

Every system of every folder that trained on pseudo labels is one point: the label NMI (and purity) of the labels
its final model was trained on, as ``results.json`` records them (SSRL: after the last epoch; baseline round r: that
round's clustering), against its test EER. DINO rows have no labels and are left out. Points from one corpus only
(the test trials differ between corpora); a folder of another corpus is refused. Systems that start from the true
labels (folders whose start is a DIAGNOSTIC label-correction bench, and the supervised ceiling) are left out unless
``--benches`` is given: they extend the NMI range far above what a clustering start reaches. Identical points (a run
repeated byte for byte in another folder) count once.

It fits EER = a + b · x by least squares (scipy.stats.linregress), x the label NMI (``--x purity``: their purity;
``--x reclustered_nmi``: a fresh k-means of the final model's embeddings, the labels its representation would give),
and reports the slope, the residual spread, the correlation of each measure with the EER, and the spread of the test
EER between training seeds of one configuration (``--group``: its sources, one training seed each) with its mean
residual (its EER against what its labels predict). With ``--pair A B`` (two ``--group`` names) it compares, seed by
seed, the EER difference the fit predicts from the two configurations' difference in x with the one measured.

    python bench/eer_vs_labels.py out/sp1986 out/sp1987 ... --group 'SSRL=out/sp1986:ssrl,out/sp1987:ssrl' \
        --group 'round 5=out/sp1986:iterative_r5,out/sp1987:iterative_r5' --pair SSRL 'round 5' \
        --out bench/results/eer_vs_labels_minivox_demo.json --plot bench/results/eer_vs_labels_minivox_demo.png

Trains and scores nothing; reads ``results.json`` only.

Measured (#13, twenty-third session; MiniVox demo corpus seed 0, every clustering-start run of the eighteenth to
twenty-third sessions on one DINO and machine: 18 folders, 43 systems; ``bench/results/eer_vs_labels_minivox_demo.json``
and ``..._purity_minivox_demo.json``): the test EER follows the labels a model trained on, -0.52 points per +0.01 NMI
(r -0.93) or -0.32 per +0.01 purity (r -0.93), residual SD 0.6 points (the spread of one configuration between
training seeds: 0.9-1.2). Over training seeds 1986-1990 SSRL's labels beat round 5's in NMI on every seed (+0.003 to
+0.014; the fit predicts -0.45 points) but trail it in purity on every seed (-0.003 to -0.022, the merging's cost; the
fit predicts +0.29); the measured mean difference is 0.00: the two label qualities cancel, and so do the EERs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from scipy import stats


MEASURES = ("nmi", "purity", "reclustered_nmi")


def read_points(folders: Sequence[str], benches: bool = False) -> Tuple[List[Dict], Dict[str, str]]:
    """(one point per system with labels and a test EER, the corpus); refused in one line when the folders mix
    corpora."""
    points, corpus, seen = [], None, set()
    for folder in folders:
        path = os.path.join(folder, "results.json")
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist (pass finished run_experiments.py folders)")
        with open(path) as f:
            res = json.load(f)
        name = (res.get("corpus") or {}).get("name"), res.get("test_list")
        if corpus is None:
            corpus = name
        elif name != corpus:
            raise SystemExit(f"{path}: corpus {name} differs from {corpus} (read one corpus at a time)")
        bench_start = "DIAGNOSTIC" in str(res.get("start") or "")  # oracle_start's label-correction benches
        for key, entry in res.get("systems", {}).items():
            labels, test = entry.get("labels"), entry.get("test") or {}
            if not labels or test.get("eer") is None or labels.get("nmi") is None:
                continue
            bench = bench_start or key == "supervised"  # run_experiments.py's supervised ceiling: the true labels
            if bench and not benches:
                continue
            point = {"folder": folder, "system": key, "label": entry.get("label", key),
                     "seed": res.get("train_seed"), "bench": bench, "nmi": float(labels["nmi"]),
                     "purity": labels.get("purity"), "clusters": labels.get("n_clusters"),
                     "eer": float(test["eer"]), "eer_se": test.get("eer_se"),
                     "reclustered_nmi": (entry.get("reclustered") or {}).get("nmi")}
            ident = (point["seed"], round(point["nmi"], 6), round(point["eer"], 6))  # a byte-identical rerun
            if ident in seen:
                continue
            seen.add(ident)
            points.append(point)
    if not points:
        raise SystemExit("no system with pseudo labels and a test EER in these folders")
    return points, {"name": corpus[0], "test_list": corpus[1]}


def fit(points: Sequence[Dict], x: str = "nmi") -> Optional[Dict]:
    """EER = intercept + slope · x over the points that have x (None below 3 points or with x all equal)."""
    pts = [p for p in points if p.get(x) is not None]
    if len(pts) < 3 or len({p[x] for p in pts}) < 2:
        return None
    r = stats.linregress([p[x] for p in pts], [p["eer"] for p in pts])
    resid = [p["eer"] - (r.intercept + r.slope * p[x]) for p in pts]
    return {"x": x, "n": len(pts), "slope": r.slope, "slope_se": r.stderr, "intercept": r.intercept,
            "r": r.rvalue, "residual_sd": statistics.stdev(resid)}


def seed_spread(points: Sequence[Dict], groups: Sequence[str], line: Dict) -> Dict[str, Dict]:
    """``--group NAME=FOLDER:SYSTEM,...`` (one configuration, one training seed per source): its EERs, their SD, and
    the mean residual from the fit (below 0: a lower EER than its labels predict)."""
    where = {(os.path.normpath(p["folder"]), p["system"]): p for p in points}
    out = {}
    for spec in groups:
        name, sep, rest = spec.rpartition("=")
        srcs = [tuple(s.strip().rsplit(":", 1)) for s in rest.split(",") if s.strip()]
        if not sep or len(srcs) < 2 or any(len(s) != 2 for s in srcs):
            raise SystemExit(f"--group {spec!r}: write NAME=FOLDER:SYSTEM,FOLDER:SYSTEM[,...] (two seeds or more)")
        got = [where.get((os.path.normpath(f), s)) for f, s in srcs]
        if None in got:
            f, s = srcs[got.index(None)]
            raise SystemExit(f"--group {name!r}: {f}:{s} is not among the points "
                             "(pass its folder; benches need --benches)")
        out[name] = {"seeds": [str(p["seed"]) for p in got], "eer": [p["eer"] for p in got],
                     **{m: [p[m] for p in got] for m in MEASURES},
                     "sd": statistics.stdev(p["eer"] for p in got),
                     "mean_residual": statistics.mean(p["eer"] - line["intercept"] - line["slope"] * p[line["x"]]
                                                      for p in got)}
    return out


def paired(groups: Dict[str, Dict], a: str, b: str, line: Dict) -> List[Dict]:
    """Seed by seed (the seeds both ``--group`` rows have): measured EER(a) - EER(b) against the fit's prediction
    from their difference in the fit's label measure (``line["x"]``)."""
    for g in (a, b):
        if g not in groups:
            raise SystemExit(f"--pair: {g!r} is not a --group name (have: {', '.join(groups) or 'none'})")
    x = line["x"]
    ga = dict(zip(groups[a]["seeds"], zip(groups[a][x], groups[a]["eer"])))
    gb = dict(zip(groups[b]["seeds"], zip(groups[b][x], groups[b]["eer"])))
    out = []
    for seed in sorted(set(ga) & set(gb)):
        d = ga[seed][0] - gb[seed][0]
        out.append({"seed": seed, f"{x}_diff": d, "eer_diff": ga[seed][1] - gb[seed][1],
                    "predicted_eer_diff": line["slope"] * d})
    if not out:
        raise SystemExit(f"--pair: {a!r} and {b!r} share no training seed")
    return out


def plot(points: Sequence[Dict], line: Dict, path: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = line["x"]
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    groups = {"SSRL": lambda p: p["system"].startswith("ssrl"),
              "baseline rounds": lambda p: p["system"].startswith("iterative")}
    for name, pick in groups.items():
        g = [p for p in points if pick(p) and not p["bench"]]
        ax.scatter([p[x] for p in g], [p["eer"] for p in g], s=18, label=name)
    b = [p for p in points if p["bench"]]
    if b:
        ax.scatter([p[x] for p in b], [p["eer"] for p in b], s=18, marker="x", label="true-label starts (DIAGNOSTIC)")
    xs = [min(p[x] for p in points), max(p[x] for p in points)]
    ax.plot(xs, [line["intercept"] + line["slope"] * v for v in xs], "k--", lw=1,
            label=f"fit: {line['slope'] / 100:+.2f} EER points per +0.01 {x}")
    ax.set_xlabel(f"label {x} of the labels the final model trained on")
    ax.set_ylabel("test EER (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="finished run_experiments.py output folders of one corpus")
    ap.add_argument("--x", default="nmi", choices=MEASURES,
                    help="the label measure fitted: nmi | purity (of the labels trained on) | reclustered_nmi (a fresh "
                         "k-means of the final model's embeddings: the labels its representation would give)")
    ap.add_argument("--benches", action="store_true",
                    help="also the systems started from the true labels (DIAGNOSTIC benches, the supervised ceiling); "
                         "the fit uses them too")
    ap.add_argument("--pair", nargs=2, default=None, metavar=("A", "B"),
                    help="two --group names compared seed by seed (B is the reference)")
    ap.add_argument("--group", action="append", default=[],
                    help="NAME=FOLDER:SYSTEM,FOLDER:SYSTEM[,...]: one configuration over training seeds (EER spread)")
    ap.add_argument("--out", default=None, help="JSON with the points, the fits and the pairs")
    ap.add_argument("--plot", default=None, help="PNG: EER against the --x measure, with the fit")
    a = ap.parse_args(argv)
    points, corpus = read_points(a.folders, a.benches)
    line = fit(points, a.x)
    if line is None:
        raise SystemExit(f"{len(points)} points: the fit needs 3 or more with different {a.x} values")
    out = {"corpus": corpus, "folders": list(a.folders), "n_points": len(points), "x": a.x, "fit": line,
           "fit_r_by_measure": {m: (fit(points, m) or {}).get("r") for m in MEASURES},
           "seed_spread": seed_spread(points, a.group, line), "points": points}
    print(f"{corpus['name']}, {len(points)} points: EER = {line['intercept']:.2f} {line['slope']:+.2f} x {a.x} "
          f"(slope SE {line['slope_se']:.2f}, r {line['r']:.2f}, residual SD {line['residual_sd']:.2f} points): "
          f"{line['slope'] / 100:+.3f} points per +0.01 {a.x}; r by measure: "
          + ", ".join(f"{m} {r:.3f}" for m, r in out["fit_r_by_measure"].items() if r is not None))
    for k, v in out["seed_spread"].items():
        print(f"  {k}, seeds {'/'.join(v['seeds'])}: EER {' / '.join(f'{e:.2f}' for e in v['eer'])}, SD {v['sd']:.2f}; "
              f"{a.x} {' / '.join(f'{e:.3f}' for e in v[a.x])}; mean residual from the fit {v['mean_residual']:+.2f}")
    if a.pair:
        sa, sb = a.pair
        pairs = paired(out["seed_spread"], sa, sb, line)
        out["pair"] = {"a": sa, "b": sb, "per_seed": pairs,
                       "mean_eer_diff": statistics.mean(p["eer_diff"] for p in pairs),
                       "mean_predicted_eer_diff": statistics.mean(p["predicted_eer_diff"] for p in pairs)}
        for p in pairs:
            print(f"  {sa} - {sb}, seed {p['seed']}: {a.x} {p[a.x + '_diff']:+.3f}, EER {p['eer_diff']:+.2f} measured, "
                  f"{p['predicted_eer_diff']:+.2f} predicted")
        print(f"  mean: EER {out['pair']['mean_eer_diff']:+.2f} measured, "
              f"{out['pair']['mean_predicted_eer_diff']:+.2f} predicted")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    if a.plot:
        plot(points, line, a.plot, f"{corpus['name']}: test EER against the labels' {a.x} ({len(points)} systems)")
    return out


if __name__ == "__main__":
    main()
