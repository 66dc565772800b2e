#!/usr/bin/env python3
"""One table over training seeds from finished ``run_experiments.py`` folders (same corpus, same test trials).

    python summarize_seeds.py --out=<folder> \\
        --row 'SSRL=runs/km1986:ssrl,runs/km1987:ssrl,runs/km1988:ssrl' \\
        --row 'Iterative baseline, round 5=runs/km1986:iterative_r5,runs/km1987:iterative_r5,runs/km1988:iterative_r5' \\
        --reference SSRL [--title '...'] [--update_readme --readme_marker=NAME]

Each ``--row NAME=FOLDER:SYSTEM[,FOLDER:SYSTEM...]`` is one system, one ``run_experiments.py`` output folder and
system key (as in its ``results.json``: ``ssrl``, ``iterative_r5``, ``dino``, a variant's name) per training seed;
the seed is the folder's ``train_seed``, so a system may come from different invocations (a variant of one, the
default of another) as long as every folder used the same corpus and test list. ``--fixed NAME=SCORES`` adds a
system that has no training seed (e.g. ``make demo``'s MFCC baseline): one ``evaluate.py`` score file of the same
trials, paired with every seed of the reference. Every row is compared with the ``--reference`` row seed by seed:

* label quality of the labels the final model trained on (NMI start → end, purity, clusters, the most true speakers
  sharing one majority cluster), per seed and their mean; the NMI difference to the reference per seed;
* the NMI of a fresh k-means of the training utterances embedded by the final model (``run_experiments.py``'s
  "re-clustered" columns: the labels its *representation* would give; training data, not the test trials), per seed,
  and its difference to the reference per seed ("-" where the folder has none);
* test EER per seed and the paired EER difference to the reference: the mean over the seeds the two rows share,
  with the standard error of a jackknife that leaves each test speaker out of every seed at once
  (``speechbrain_ssrl.scoring.paired_eer_difference_over_seeds``), the per-seed differences, and whether the
  difference exceeds 2 SE and has the same sign on every seed.

Writes ``<out>/summary.md`` and ``<out>/summary.json``; ``--update_readme`` replaces the README section
``<!-- NAME:start -->`` ... ``<!-- NAME:end -->`` with the table and copies both files next to the README
(``--readme_assets``). Nothing is trained or evaluated here: the numbers
are those the folders hold.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from run_experiments import RECIPE, fmt, read_json, readme_section, write_json
from speechbrain_ssrl.scoring import eer_of_trials, paired_eer_difference_over_seeds, read_score_file


def parse_row(spec: str) -> Tuple[str, List[Tuple[str, str]]]:
    """``NAME=FOLDER:SYSTEM[,FOLDER:SYSTEM...]`` → (name, [(folder, system), ...]); refused in one line. Split at
    the last ``=``: a name may hold one (``SSRL w/o label queue (L = 1)``), the folders may not."""
    name, sep, rest = spec.rpartition("=")
    parts = [p.strip() for p in rest.split(",") if p.strip()]
    if not sep or not name.strip() or not parts or any(":" not in p for p in parts):
        raise SystemExit(f"--row {spec!r}: write NAME=FOLDER:SYSTEM[,FOLDER:SYSTEM...] (e.g. 'SSRL=out/km1986:ssrl')")
    return name.strip(), [tuple(p.rsplit(":", 1)) for p in parts]  # type: ignore[misc]


def load_row(name: str, sources: Sequence[Tuple[str, str]]) -> Dict[str, Dict]:
    """seed → {folder, system, results.json entry, run facts} for one row; refusals name the folder or key."""
    out: Dict[str, Dict] = {}
    for folder, system in sources:
        path = os.path.join(folder, "results.json")
        if not os.path.exists(path):
            raise SystemExit(f"--row {name!r}: {path} does not exist (a finished run_experiments.py folder is needed)")
        res = read_json(path)
        if system not in res.get("systems", {}):
            raise SystemExit(f"--row {name!r}: {path} has no system {system!r} (it has {', '.join(res.get('systems', {}))})")
        seed = str(res.get("train_seed"))
        if seed in out:
            raise SystemExit(f"--row {name!r}: two sources for training seed {seed} ({out[seed]['folder']} and {folder})")
        scores = os.path.join(folder, "eval", system, f"scores_{res['test_list']}.txt")
        if not os.path.exists(scores):
            raise SystemExit(f"--row {name!r}: {scores} does not exist (re-run that folder's run_experiments.py command)")
        out[seed] = {"folder": folder, "system": system, "entry": res["systems"][system], "scores": scores,
                     "corpus": res["corpus"].get("name"), "data_folder": res["corpus"].get("data_folder"),
                     "test_list": res["test_list"], "start": res.get("start"), "command": res.get("command"),
                     "commit": res.get("git", {}).get("commit"), "finished": res.get("finished")}
    return out


def fixed_row(name: str, scores: str, seeds: Sequence[str]) -> Dict[str, Dict]:
    """A system without a training seed (``--fixed NAME=SCORES``): its score file stands for every seed given."""
    if not os.path.exists(scores):
        raise SystemExit(f"--fixed {name!r}: {scores} does not exist (an evaluate.py scores_<list>.txt is needed)")
    _, _, labels, sc = read_score_file(scores)
    entry = {"test": {"eer": eer_of_trials(sc, labels)}}
    return {seed: {"folder": os.path.dirname(scores), "system": os.path.basename(scores), "entry": entry, "scores": scores,
                   "fixed": True, "commit": None} for seed in seeds}


def check_same_corpus(rows: Dict[str, Dict[str, Dict]]) -> Tuple[str, str, Dict[str, str]]:
    """Every source must use one corpus and one test list, and the seeds of a row one start (rows may differ in it:
    e.g. k-means against spectral clustering, both of the same DINO teacher); else a one-line refusal. Returns the
    corpus, the test list and each trained row's start."""
    seen = {(s["corpus"], s["data_folder"], s["test_list"]) for r in rows.values() for s in r.values()
            if not s.get("fixed")}
    if len(seen) != 1:
        raise SystemExit("the rows' folders use different corpora or test lists: "
                         + "; ".join(" / ".join(map(str, k)) for k in sorted(seen, key=str)) + " (summarise one at a time)")
    starts = {}
    for name, r in rows.items():
        own = {s["start"] for s in r.values() if not s.get("fixed")}
        if len(own) > 1:
            raise SystemExit(f"--row {name!r}: its seeds' folders use different starts: "
                             + "; ".join(sorted(map(str, own))) + " (one start per row)")
        if own:
            starts[name] = own.pop()
    corpus, _, test_list = seen.pop()
    return corpus, test_list, starts


def mean(values: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def seed_values(seed: Dict) -> Dict:
    """One seed's table values from its results.json entry (``None`` where the entry has none)."""
    e = seed["entry"]
    lab, st = e.get("labels") or {}, e.get("labels_start") or {}
    return {"nmi": lab.get("nmi"), "nmi_start": st.get("nmi"), "purity": lab.get("purity"),
            "clusters": lab.get("n_clusters"), "max_speakers_per_home": lab.get("max_speakers_per_home"),
            "reclustered_nmi": (e.get("reclustered") or {}).get("nmi"),
            "eer": e["test"]["eer"], "eer_se": e["test"].get("eer_se"),
            "source": f"{seed['folder']}:{seed['system']}"}


def summarize(rows: Dict[str, Dict[str, Dict]], reference: str) -> Dict:
    """The summary's numbers: per row and seed the labels and EER, per row the means and the paired differences."""
    corpus, test_list, starts = check_same_corpus(rows)
    ref = rows[reference]
    values = {name: {seed: seed_values(seeds[seed]) for seed in sorted(seeds)} for name, seeds in rows.items()}
    ref_values = values[reference]
    table = {}
    for name, seeds in rows.items():
        per_seed = values[name]
        row = {"seeds": per_seed,
               "mean": {k: mean([v[k] for v in per_seed.values()]) for k in ("nmi", "nmi_start", "purity", "reclustered_nmi", "eer")}}
        shared = [s for s in sorted(seeds) if s in ref]
        if name != reference and shared:
            def diffs(key: str) -> List[Optional[float]]:  # per shared seed: this row's value - the reference's
                pairs = [(per_seed[s][key], ref_values[s][key]) for s in shared]
                return [None if a is None or b is None else a - b for a, b in pairs]

            nmi_d, re_d = diffs("nmi"), diffs("reclustered_nmi")
            d, se, per = paired_eer_difference_over_seeds([(seeds[s]["scores"], ref[s]["scores"]) for s in shared])
            row["vs_reference"] = {"seeds": shared, "nmi_diff": nmi_d, "reclustered_nmi_diff": re_d,
                                   "eer_diff": d, "eer_diff_se": se, "eer_diff_per_seed": per,
                                   "holds": bool(abs(d) > 2 * se),
                                   "same_sign_every_seed": bool(all(x < 0 for x in per) or all(x > 0 for x in per))}
        table[name] = row
    distinct = sorted(set(starts.values()))
    start = distinct[0] if len(distinct) == 1 else None
    return {"corpus": corpus, "test_list": test_list, "start": start, "starts": starts, "reference": reference, "rows": table,
            "sources": {n: {s: {k: v for k, v in src.items() if k != "entry"} for s, src in seeds.items()}
                        for n, seeds in rows.items()}}


def per_seed_cell(row: Dict, key: str, spec: str) -> str:
    return " / ".join(fmt(v[key], spec) for v in row["seeds"].values())


def summary_markdown(summ: Dict, title: str, command: str, heading: str = "###") -> str:
    rows, ref = summ["rows"], summ["reference"]
    seeds_all = sorted({s for r in rows.values() for s in r["seeds"]})
    lines = [f"{heading} {title}", "",
             f"- command: `{command}` (run from `recipes/VoxCeleb/SSRL`; it reads finished run folders, trains nothing)",
             f"- corpus: {summ['corpus']}; test list `{summ['test_list']}`; "
             + (f"start of every system: {summ['start']}" if summ.get("start") is not None else
                "starts (they differ between rows): " + "; ".join(
                    f"{st} ({', '.join(n for n, x in summ['starts'].items() if x == st)})"
                    for st in dict.fromkeys(summ["starts"].values()))),
             f"- training seeds: {', '.join(seeds_all)}; per-seed values are listed in seed order", ""]
    lines += ["| System | seeds | label NMI start → end (per seed) | NMI end, mean | purity (per seed) | clusters | "
              "max speakers / home | re-clustered NMI (per seed) | EER % (per seed) | EER mean |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        nmi = " / ".join((f"{fmt(v['nmi_start'])} → " if v["nmi_start"] is not None else "") + fmt(v["nmi"])
                         for v in r["seeds"].values())
        lines.append(f"| {name} | {', '.join(r['seeds'])} | {nmi} | {fmt(r['mean']['nmi'])} | {per_seed_cell(r, 'purity', '.3f')} | "
                     f"{per_seed_cell(r, 'clusters', '.0f')} | {per_seed_cell(r, 'max_speakers_per_home', '.0f')} | "
                     f"{per_seed_cell(r, 'reclustered_nmi', '.3f')} | "
                     f"{per_seed_cell(r, 'eer', '.2f')} | {fmt(r['mean']['eer'], '.2f')} |")
    compared = [(name, r["vs_reference"]) for name, r in rows.items() if r.get("vs_reference")]
    if compared:
        lines += ["", f"Against **{ref}**, seed by seed (the seeds both rows have):", "",
                  "| System | seeds | NMI − reference (per seed) | re-clustered NMI − reference (per seed) | EER − reference, "
                  "points (per seed) | mean over seeds ± SE | holds (\\|mean\\| > 2 SE) | same sign on every seed |",
                  "|---|---|---|---|---|---|---|---|"]
    else:  # one row, or none shares a seed with the reference: no empty table
        lines += ["", f"No other row shares a training seed with **{ref}**: no paired comparison."]
    for name, v in compared:
        nmi_d = " / ".join(fmt(x, "+.3f") for x in v["nmi_diff"])
        re_d = " / ".join(fmt(x, "+.3f") for x in v.get("reclustered_nmi_diff") or [None] * len(v["seeds"]))
        eer_d = " / ".join(format(x, "+.2f") for x in v["eer_diff_per_seed"])
        holds = ("yes: reference better" if v["eer_diff"] > 0 else "yes: reference worse") if v["holds"] else "no (within 2 SE)"
        lines.append(f"| {name} | {', '.join(v['seeds'])} | {nmi_d} | {re_d} | {eer_d} | {v['eer_diff']:+.2f} ± {v['eer_diff_se']:.2f} | "
                     f"{holds} | {'yes' if v['same_sign_every_seed'] else 'no'} |")
    lines += ["", "NMI / purity / clusters / max speakers per home: the labels the final model was trained on (SSRL rows: "
              "after the last epoch; baseline round r: the labels of round r, its clustering of round r - 1's model), against the true speakers. "
              "Re-clustered NMI: a fresh k-means of the training utterances embedded by the row's final model (the labels its "
              "representation would give; for baseline round r, those of round r + 1). Means are "
              "over each row's own seeds; the paired comparison takes the seeds two rows share. SE of the "
              "mean EER difference: jackknife over the test speakers, each left-out speaker removing its trials from every "
              "seed's pair at once; it measures the test set's sampling, not the spread between training seeds, which the "
              "per-seed columns show.", "", "Sources (folder:system per seed; the commit is the one of the invocation that wrote "
              "the folder's results.json, which reuses finished runs):", ""]
    for name, srcs in summ["sources"].items():
        if any(v.get("fixed") for v in srcs.values()):
            lines.append(f"- {name}: `{next(iter(srcs.values()))['scores']}` (no training seed: paired with every seed)")
            continue
        lines.append(f"- {name}: " + "; ".join(f"seed {s}: `{v['folder']}:{v['system']}` (commit `{str(v['commit'])[:10]}`)"
                                               for s, v in sorted(srcs.items())))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", required=True, metavar="NAME=FOLDER:SYSTEM[,...]",
                    help="one system: a run_experiments.py folder and system key per training seed")
    ap.add_argument("--fixed", action="append", default=[], metavar="NAME=SCORES",
                    help="a system without a training seed: one evaluate.py score file of the same trials (e.g. MFCC)")
    ap.add_argument("--reference", required=True, help="the NAME of the --row every other row is compared with")
    ap.add_argument("--out", required=True, help="folder for summary.md / summary.json")
    ap.add_argument("--title", default=None, help="the table's heading (default: names the corpus and the reference)")
    ap.add_argument("--update_readme", action="store_true", help="replace the README section --readme_marker with the table")
    ap.add_argument("--readme_marker", default=None, help="README section <!-- NAME:start --> ... <!-- NAME:end -->")
    ap.add_argument("--readme_file", default=os.path.join(RECIPE, "README.md"), help="README to update (default: the recipe's)")
    ap.add_argument("--readme_assets", default=None,
                    help="folder next to the README that receives summary.md / summary.json (default: the marker, '-' -> '_')")
    a = ap.parse_args(argv)
    a.rows = dict(parse_row(r) for r in a.row)
    a.fixed_rows = {}
    for spec in a.fixed:
        name, sep, path = spec.rpartition("=")  # a name may hold "=", the path may not
        if not sep or not name.strip() or not path.strip():
            ap.error(f"--fixed {spec!r}: write NAME=SCORES (e.g. 'MFCC=demo/mfcc/scores_veri_test2.txt')")
        a.fixed_rows[name.strip()] = path.strip()
    if len(a.rows) + len(a.fixed_rows) != len(a.row) + len(a.fixed) or set(a.rows) & set(a.fixed_rows):
        ap.error("two rows with one NAME: give each system one --row (all its seeds) or one --fixed")
    if a.reference not in a.rows:
        ap.error(f"--reference {a.reference!r} is not a --row NAME ({', '.join(a.rows)})")
    if a.update_readme and not a.readme_marker:
        ap.error("--update_readme needs --readme_marker (the README section to replace)")
    return a


def main(argv=None) -> Dict:
    a = parse_args(argv)
    if a.update_readme:
        readme_section(a.readme_file, a.readme_marker)  # refuse before reading anything
    rows = {name: load_row(name, sources) for name, sources in a.rows.items()}
    rows.update({name: fixed_row(name, path, sorted(rows[a.reference])) for name, path in a.fixed_rows.items()})
    summ = summarize(rows, a.reference)
    command = "python summarize_seeds.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    title = a.title or f"Over training seeds: {summ['corpus']}, against {a.reference}"
    summ.update(command=command, title=title, written=datetime.datetime.now().isoformat(timespec="seconds"))
    os.makedirs(a.out, exist_ok=True)
    md = summary_markdown(summ, title, command)
    with open(os.path.join(a.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(md.replace("### ", "# ", 1))
    write_json(os.path.join(a.out, "summary.json"), summ)
    print(md)
    if a.update_readme:
        dest = os.path.join(os.path.dirname(os.path.abspath(a.readme_file)), a.readme_assets or a.readme_marker.replace("-", "_"))
        os.makedirs(dest, exist_ok=True)
        for f in ("summary.md", "summary.json"):
            shutil.copy2(os.path.join(a.out, f), os.path.join(dest, f))
        readme_section(a.readme_file, a.readme_marker, md.rstrip("\n"))
        print(f"updated {a.readme_file} ({a.readme_marker})")
    return summ


if __name__ == "__main__":
    main()
