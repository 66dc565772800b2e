"""scoring: EER/minDCF equal SpeechBrain's, a hand-computed example, AS-norm, trial scoring, bad input."""

import numpy as np
import pytest
import torch

from speechbrain.utils.metric_stats import EER, minDCF
from speechbrain_ssrl import scoring
from speechbrain_ssrl.scoring import asnorm, cohort_stats, eer, eer_with_se, min_dcf, score_trials, trial_metrics

torch.set_num_threads(1)


def _random_scores(n, kind, seed):
    g = torch.Generator().manual_seed(seed)
    n_pos = max(1, n // 3)
    n_neg = n - n_pos
    if kind == "gauss":
        return torch.randn(n_pos, generator=g) + 1.0, torch.randn(n_neg, generator=g)
    if kind == "ties":  # few distinct values: many ties inside and across classes
        return (torch.randint(0, 8, (n_pos,), generator=g).float() / 4,
                torch.randint(0, 6, (n_neg,), generator=g).float() / 4)
    if kind == "float64":
        return (torch.randn(n_pos, generator=g, dtype=torch.float64) * 0.1 + 0.5,
                torch.randn(n_neg, generator=g, dtype=torch.float64) * 0.1 + 0.2)
    raise ValueError(kind)


@pytest.mark.parametrize("n", [10, 100, 1000, 3000])
@pytest.mark.parametrize("kind", ["gauss", "ties", "float64"])
def test_equal_to_speechbrain(n, kind):
    pos, neg = _random_scores(n, kind, seed=n)
    e, th = eer(pos, neg)
    sb_e, sb_th = EER(pos, neg)
    assert abs(e - sb_e) < 1e-9 and th == sb_th
    for p in (0.01, 0.05):
        d, dth = min_dcf(pos, neg, p_target=p)
        sb_d, sb_dth = minDCF(pos, neg, p_target=p)
        assert abs(d * min(p, 1 - p) - sb_d) < 1e-9 and dth == sb_dth
    both = scoring.eer_and_min_dcf(pos, neg, (0.01, 0.05))  # one sort, same numbers
    assert both["eer"] == e and both["eer_threshold"] == th
    assert both["min_dcf_0.05"] == min_dcf(pos, neg, 0.05)[0] and both["min_dcf_0.01"] == min_dcf(pos, neg)[0]


def test_equal_to_speechbrain_many_small_lists():
    # tiny lists hit the corner cases of the tie rules (several thresholds with the same |FAR-FRR|)
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        n_pos, n_neg = int(torch.randint(1, 8, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
        pos = torch.randint(0, 5, (n_pos,), generator=g).float()
        neg = torch.randint(0, 4, (n_neg,), generator=g).float()
        assert eer(pos, neg) == pytest.approx(EER(pos, neg), abs=1e-12)
        assert min_dcf(pos, neg, 0.05)[0] * 0.05 == pytest.approx(minDCF(pos, neg, p_target=0.05)[0], abs=1e-12)


def test_hand_computed_example():
    # targets 0.9 0.8 0.3 ; non-targets 0.7 0.2 0.1
    # at t = 0.3: misses {0.3} -> FRR 1/3; false alarms {0.7} -> FAR 1/3  => EER = 1/3
    pos, neg = [0.9, 0.8, 0.3], [0.7, 0.2, 0.1]
    e, th = eer(pos, neg)
    assert e == pytest.approx(1 / 3)
    assert th == pytest.approx(0.3)
    # p = 0.01: accepting everything above t = 0.7 costs 0.01*FRR(1/3)+0.99*0 = 1/300;
    # normalised by min(0.01, 0.99) = 0.01 -> 1/3. At t = 0.8: 0.01*2/3 -> 2/3; t = 0.2: 0.99/3 -> 33.
    d, dth = min_dcf(pos, neg, p_target=0.01)
    assert d == pytest.approx(1 / 3, abs=1e-6)
    assert dth == pytest.approx(0.7)
    # p = 0.5: cost 0.5*(FRR+FAR) normalised by 0.5 -> min FRR+FAR = 1/3 (t = 0.7 or t = 0.3)
    assert min_dcf(pos, neg, p_target=0.5)[0] == pytest.approx(1 / 3, abs=1e-6)
    # perfectly separated lists
    assert eer([1.0, 2.0], [0.0, -1.0])[0] == 0.0
    assert min_dcf([1.0, 2.0], [0.0, -1.0])[0] == 0.0


def test_trial_metrics_and_se():
    rng = np.random.default_rng(0)
    spk = np.array([f"id{i:02d}" for i in range(12)])
    a, b = rng.choice(spk, 400), rng.choice(spk, 400)
    labels = rng.integers(0, 2, 400)
    scores = rng.normal(size=400) + labels
    m = trial_metrics(scores, labels, p_targets=(0.01, 0.05), spk_a=a, spk_b=b)
    assert set(m) >= {"eer", "eer_se", "min_dcf_0.01", "min_dcf_0.05", "n_trials", "n_target", "n_nontarget"}
    assert 0 < m["eer"] < 100 and m["n_trials"] == 400 and m["n_target"] == int(labels.sum())
    assert 0 < m["eer_se"] < 10
    # the fast leave-one-out EER equals a plain recomputation on each subset
    stat = scoring._fast_eer_stat(scores, labels)
    for s in spk[:4]:
        mask = (a != s) & (b != s)
        assert stat(mask) == pytest.approx(scoring.eer_of_trials(scores[mask], labels[mask]), abs=1e-9)
    assert eer_with_se(scores, labels, a, b)["eer"] == pytest.approx(m["eer"], abs=1e-9)


@pytest.mark.parametrize("decimals", [0, 1, 6])
def test_fast_jackknife_equals_generic(decimals):
    """eer_with_se (bisection on one sort) == leave_one_speaker_out with a plain EER, ties included."""
    for seed in range(15):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(20, 300))
        spk = np.array([f"s{i}" for i in range(int(rng.integers(3, 12)))])
        a, b = rng.choice(spk, n), rng.choice(spk, n)
        labels = rng.integers(0, 2, n)
        scores = np.round(rng.normal(size=n) + labels, decimals)
        fast = eer_with_se(scores, labels, a, b)
        value, se, _ = scoring.leave_one_speaker_out(lambda m: scoring.eer_of_trials(scores[m], labels[m]), a, b)
        assert fast["eer"] == pytest.approx(value, abs=1e-9)
        assert fast["eer_se"] == pytest.approx(se, abs=1e-9, nan_ok=True)


def test_score_trials_and_asnorm():
    g = torch.Generator().manual_seed(0)
    emb = {f"s{i}/x/{j}.wav": torch.randn(8, generator=g) for i in range(3) for j in range(2)}
    trials = [(1, "s0/x/0.wav", "s0/x/1.wav"), (0, "s0/x/0.wav", "s1/x/0.wav"), (0, "s2/x/1.wav", "s1/x/1.wav")]
    s = score_trials(emb, trials)
    ref = torch.stack([torch.nn.functional.cosine_similarity(emb[e], emb[t], dim=0) for _, e, t in trials])
    assert torch.allclose(s, ref, atol=1e-6)

    cohort = torch.randn(50, 8, generator=g)
    ea = torch.stack([emb[e] for _, e, _ in trials])
    ta = torch.stack([emb[t] for _, _, t in trials])
    a = asnorm(s, ea, ta, cohort, topk=10)
    # reference: explicit top-10 per side
    cn = torch.nn.functional.normalize(cohort, dim=-1)

    def stats(x):
        top = (torch.nn.functional.normalize(x, dim=-1) @ cn.T).topk(10, dim=1).values
        return top.mean(1), top.std(1)

    (me, se), (mt, st) = stats(ea), stats(ta)
    assert torch.allclose(a, 0.5 * ((s - me) / se + (s - mt) / st), atol=1e-5)
    assert torch.allclose(score_trials(emb, trials, cohort_emb=cohort, topk=10), a, atol=1e-5)
    # chunking does not change the statistics
    m1, s1 = cohort_stats(ea, cohort, topk=10, chunk_size=1)
    assert torch.allclose(m1, me, atol=1e-6) and torch.allclose(s1, se, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        eer([], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        min_dcf([0.3], [])
    with pytest.raises(ValueError, match="NaN"):
        eer([0.1, float("nan")], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        min_dcf([0.1], [float("inf")])
    with pytest.raises(ValueError, match="p_target"):
        min_dcf([0.1], [0.0], p_target=1.0)
    with pytest.raises(ValueError, match="one class"):
        trial_metrics([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="one class"):
        scoring.eer_of_trials([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="empty"):
        trial_metrics([], [])
    with pytest.raises(ValueError, match="empty"):
        score_trials({}, [])
    emb = {"a": torch.ones(4), "b": torch.tensor([1.0, float("nan"), 0.0, 0.0])}
    with pytest.raises(ValueError, match="NaN"):
        score_trials(emb, [(1, "a", "b")])
    with pytest.raises(KeyError, match="no embedding"):
        score_trials(emb, [(1, "a", "c")])
    with pytest.raises(ValueError, match="cohort"):
        asnorm(torch.zeros(1), torch.ones(1, 4), torch.ones(1, 4), torch.ones(1, 4))


def test_paired_eer_difference_of_two_score_files(tmp_path, capsys):
    import json

    from speechbrain_ssrl.scoring import eer_of_trials, main, paired_eer_difference, read_score_file

    rng = np.random.default_rng(0)
    lines_x, lines_r = [], []
    for k in range(400):
        a, b = f"id{k % 8:02d}/v/1.wav", f"id{(k * 3) % 8:02d}/w/2.wav"
        lab = int(k % 2 == 0)
        lines_x.append(f"{a} {b} {lab} {rng.normal(1.0 * lab, 1.0):.5f}\n")
        lines_r.append(f"{a} {b} {lab} {rng.normal(0.5 * lab, 1.0):.5f}\n")
    (tmp_path / "x.txt").write_text("".join(lines_x))
    (tmp_path / "r.txt").write_text("".join(lines_r))
    ea, eb, lab, sx = read_score_file(str(tmp_path / "x.txt"))
    assert ea[0] == "id00" and lab[:2].tolist() == [1, 0]
    _, _, _, sr = read_score_file(str(tmp_path / "r.txt"))
    d, se = paired_eer_difference(str(tmp_path / "x.txt"), str(tmp_path / "r.txt"))
    assert d == pytest.approx(eer_of_trials(sx, lab) - eer_of_trials(sr, lab), abs=1e-9)
    assert d < 0 and 0 < se < abs(d)
    main([str(tmp_path / "x.txt"), str(tmp_path / "r.txt")])
    out = json.loads(capsys.readouterr().out)
    assert out["diff"] == pytest.approx(d) and out["n_trials"] == 400 and out["holds"] == bool(abs(d) > 2 * se)
    (tmp_path / "other.txt").write_text("".join(lines_r[:-1]))
    with pytest.raises(ValueError, match="do not score the same trials"):
        paired_eer_difference(str(tmp_path / "x.txt"), str(tmp_path / "other.txt"))


def test_paired_eer_difference_over_seeds(tmp_path, capsys):
    """Several (x, ref) pairs of one trial list: the mean of the per-pair differences, with the SE of a jackknife
    that leaves each test speaker out of every pair at once (one pair = paired_eer_difference)."""
    import json

    from speechbrain_ssrl.scoring import leave_one_speaker_out, main, paired_eer_difference, paired_eer_difference_over_seeds
    from speechbrain_ssrl.scoring import eer_of_trials, read_score_file

    rng = np.random.default_rng(1)
    trials = [(f"id{k % 9:02d}/v/1.wav", f"id{(k * 4 + 1) % 9:02d}/w/2.wav", int(k % 3 == 0)) for k in range(450)]
    files = {}
    for name, gap in [("x1", 1.2), ("r1", 0.6), ("x2", 1.0), ("r2", 0.9)]:
        files[name] = str(tmp_path / f"{name}.txt")
        with open(files[name], "w") as f:
            f.writelines(f"{a} {b} {lab} {rng.normal(gap * lab, 1.0):.5f}\n" for a, b, lab in trials)
    d1, se1 = paired_eer_difference(files["x1"], files["r1"])
    d2, _ = paired_eer_difference(files["x2"], files["r2"])
    assert paired_eer_difference_over_seeds([(files["x1"], files["r1"])])[:2] == pytest.approx((d1, se1), abs=1e-12)
    mean, se, per = paired_eer_difference_over_seeds([(files["x1"], files["r1"]), (files["x2"], files["r2"])])
    assert per == pytest.approx([d1, d2], abs=1e-12) and mean == pytest.approx((d1 + d2) / 2, abs=1e-12)
    # the SE is the jackknife of the seed mean over the test speakers (computed here the slow way)
    sc = {n: read_score_file(p) for n, p in files.items()}
    a, b, lab, _ = sc["x1"]

    def stat(m):
        return np.mean([eer_of_trials(sc[x][3][m], lab[m]) - eer_of_trials(sc[r][3][m], lab[m]) for x, r in [("x1", "r1"), ("x2", "r2")]])

    assert se == pytest.approx(leave_one_speaker_out(stat, a, b)[1], abs=1e-9) and se > 0
    main([files["x1"], files["r1"], files["x2"], files["r2"]])
    out = json.loads(capsys.readouterr().out)
    assert out["n_pairs"] == 2 and out["diff"] == pytest.approx(mean) and out["diff_per_pair"] == pytest.approx([d1, d2])
    assert out["holds"] == bool(abs(mean) > 2 * se)
    with pytest.raises(SystemExit):
        main([files["x1"], files["r1"], files["x2"]])
    assert "in pairs X REF" in capsys.readouterr().err
    (tmp_path / "short.txt").write_text("".join(open(files["r2"]).readlines()[:-1]))
    with pytest.raises(ValueError, match="do not score the same trials"):
        paired_eer_difference_over_seeds([(files["x1"], files["r1"]), (files["x2"], str(tmp_path / "short.txt"))])
    short = str(tmp_path / "short.txt")
    with pytest.raises(ValueError, match="do not score the same trials"):  # a pair of another trial list
        paired_eer_difference_over_seeds([(files["x1"], files["r1"]), (short, short)])
