"""Tests of speechbrain_ssrl.noisy_labels."""

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from speechbrain_ssrl.noisy_labels import NoisyLabelModel, clean_probability, fit_clean_gmm, noisy_floor_setting

torch.set_num_threads(1)


def _two_populations(n_clean=3000, n_noisy=1000, seed=0):
    """Clean labels: small cross-entropies; noisy labels: large ones (log-normal populations)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.exp(torch.randn(n_clean, generator=g) * 0.8 - 3.0)
    noisy = torch.exp(torch.randn(n_noisy, generator=g) * 0.5 + 1.5)
    losses = torch.cat([clean, noisy])
    is_clean = torch.cat([torch.ones(n_clean, dtype=torch.bool), torch.zeros(n_noisy, dtype=torch.bool)])
    perm = torch.randperm(losses.numel(), generator=g)
    return losses[perm], is_clean[perm]


def test_two_population_weights():
    losses, is_clean = _two_populations()
    fit = fit_clean_gmm(losses)
    p = fit.p
    assert p.shape == losses.shape and p.dtype == torch.float32
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert roc_auc_score(is_clean.numpy(), p.numpy()) > 0.95
    assert float(p[is_clean].mean()) > 0.9
    assert float(p[~is_clean].mean()) < 0.1
    # clean component first, in the log domain
    assert fit.means[0] < fit.means[1]
    assert abs(fit.means[0] - (-3.0)) < 0.2 and abs(fit.means[1] - 1.5) < 0.2
    assert abs(fit.weights[0] - 0.75) < 0.05
    assert fit.converged and fit.degenerate is None
    # deterministic
    assert torch.equal(clean_probability(losses), p)
    # the shorthand forwards the GMM's keywords (and refuses unknown ones)
    assert torch.equal(clean_probability(losses, space="loss"), fit_clean_gmm(losses, space="loss").p)
    with pytest.raises(TypeError):
        clean_probability(losses, spaces="loss")


def test_clipping_bounds():
    losses, _ = _two_populations()
    losses[:5] = 0.0  # log(0 + eps) = -27.6, below the -20 floor
    fit = fit_clean_gmm(losses)
    assert fit.clip_low >= -20.0
    u = torch.log(losses.double() + 1e-12)
    assert math.isclose(fit.clip_high, float(torch.quantile(u, 0.999)), rel_tol=1e-9)
    assert bool((fit.p[:5] > 0.5).all())


def test_constant_input_gives_ones_with_warning():
    with pytest.warns(UserWarning, match="not fitted"):
        p = clean_probability(torch.full((100,), 0.7))
    assert torch.equal(p, torch.ones(100))
    with pytest.warns(UserWarning):
        assert clean_probability(torch.tensor([2.0])).tolist() == [1.0]
    assert clean_probability(torch.tensor([])).numel() == 0


def test_nan_inf_negative_errors():
    with pytest.raises(ValueError, match="NaN"):
        clean_probability(torch.tensor([0.1, float("nan"), 0.3]))
    with pytest.raises(ValueError, match="inf"):
        clean_probability(torch.tensor([0.1, float("inf"), 0.3]))
    with pytest.raises(ValueError, match=">= 0"):
        clean_probability(torch.tensor([0.1, -1.0, 0.3]))


def test_model_partial_update_keeps_others():
    losses, is_clean = _two_populations(600, 200)
    model = NoisyLabelModel(1000)
    assert torch.equal(model.weights(torch.arange(1000)), torch.ones(1000))
    idx = torch.arange(100, 900)
    stats = model.update(idx, losses)
    assert torch.equal(model.p[:100], torch.ones(100)) and torch.equal(model.p[900:], torch.ones(100))
    assert torch.allclose(model.p[idx], clean_probability(losses))
    assert stats["n_fitted"] == 800 and stats["gmm_mean_clean"] < stats["gmm_mean_noisy"]
    assert 0.2 < stats["frac_noisy"] < 0.3 and stats["mean_p"] < 1.0
    conf = model.detector_confusion(idx, is_clean)
    assert sum(conf.values()) == 800
    assert conf["TP"] + conf["FN"] == int(is_clean.sum())
    assert (conf["TP"] + conf["TN"]) / 800 > 0.95
    w = model.weights(torch.tensor([0, 150, 999]))
    assert w[0] == 1.0 and w[2] == 1.0 and w.dtype == torch.float32


def test_model_repeated_indices_count_once():
    losses, _ = _two_populations(300, 100)
    model = NoisyLabelModel(400)
    idx = torch.cat([torch.arange(400), torch.tensor([0, 1])])  # DDP padding repeats
    model.update(idx, torch.cat([losses, losses[:2]]))
    assert model.stats()["n_fitted"] == 400
    assert torch.allclose(model.p, clean_probability(losses))


def test_model_disabled():
    losses, _ = _two_populations(300, 100)
    model = NoisyLabelModel(400, enabled=False)
    stats = model.update(torch.arange(400), losses)
    assert torch.equal(model.p, torch.ones(400))
    assert stats["enabled"] is False and stats["mean_p"] == 1.0 and stats["frac_noisy"] == 0.0


def test_model_state_round_trip(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    losses, _ = _two_populations(300, 100)
    model = NoisyLabelModel(500)
    model.update(torch.arange(400), losses)
    Checkpointer(tmp_path, {"noise": model}).save_checkpoint()
    restored = NoisyLabelModel(500)
    Checkpointer(tmp_path, {"noise": restored}).recover_if_possible()
    assert torch.equal(restored.p, model.p)
    assert restored.stats() == model.stats()
    assert restored.n_updates == 1
    with pytest.raises(ValueError):
        NoisyLabelModel(3).load_state_dict(model.state_dict())


def _bulk_tail_and_wrong(wrong=0.18, n=2000, seed=0):
    """The shape measured on finished MiniVox runs (issue #13): correct labels' teacher losses are a dense
    bulk near 0.6 plus a thin tail of near-zero losses that spans decades in the log domain; wrong labels
    are a narrow mode near 25 (s = 32 times a cosine gap of ~0.8)."""
    g = torch.Generator().manual_seed(seed)
    nw = int(n * wrong)
    nc = n - nw
    nt = int(0.15 * nc)
    bulk = torch.exp(torch.randn(nc - nt, generator=g) * 0.4 - 0.4)
    tail = torch.exp(torch.rand(nt, generator=g) * -14 - 1)
    bad = torch.randn(nw, generator=g) * 3 + 25
    return torch.cat([bulk, tail, bad]), torch.cat([torch.ones(nc, dtype=torch.bool), torch.zeros(nw, dtype=torch.bool)])


def _recall_precision(p, is_clean):
    called = p >= 0.5
    return float(called[is_clean].float().mean()), float(is_clean[called].float().mean())


def test_loss_space_finds_the_wrong_labels_where_the_log_space_splits_the_correct_ones():
    losses, is_clean = _bulk_tail_and_wrong()
    log_fit, loss_fit = fit_clean_gmm(losses), fit_clean_gmm(losses, space="loss")
    rec_log, _ = _recall_precision(log_fit.p, is_clean)
    rec_loss, prec_loss = _recall_precision(loss_fit.p, is_clean)
    assert rec_log < 0.5  # the release's log domain: the tail and the wrong mode make one wide component
    assert rec_loss > 0.95 and prec_loss > 0.95
    assert loss_fit.means[0] == pytest.approx(0.6, abs=0.2) and loss_fit.means[1] == pytest.approx(25, abs=1)
    assert loss_fit.clip_low == pytest.approx(float(losses.min())) and not loss_fit.gated
    with pytest.raises(ValueError, match="gmm_space"):
        fit_clean_gmm(losses, space="logit")


def test_noisy_floor_gates_a_split_of_correct_labels_only():
    floor = math.log(116)
    clean_only, _ = _bulk_tail_and_wrong(wrong=0.0)
    for space in ("log_loss", "loss"):
        split = fit_clean_gmm(clean_only, space=space)
        assert float((split.p < 0.5).float().mean()) > 0.02  # two components are always fitted
        gated = fit_clean_gmm(clean_only, space=space, noisy_floor=floor)
        assert gated.gated and torch.equal(gated.p, torch.ones_like(gated.p))
        assert gated.means == split.means  # the fit is still reported
    noisy, is_clean = _bulk_tail_and_wrong(wrong=0.18)
    kept = fit_clean_gmm(noisy, space="loss", noisy_floor=floor)
    assert not kept.gated and torch.equal(kept.p, fit_clean_gmm(noisy, space="loss").p)


def test_model_log_k_floor_uses_the_active_clusters():
    losses, _ = _bulk_tail_and_wrong(wrong=0.0, n=500)
    idx = torch.arange(500)
    model = NoisyLabelModel(500, space="loss", noisy_floor="log_k")
    with pytest.raises(ValueError, match="log_k"):
        model.update(idx, losses)
    assert model.floor(116) == pytest.approx(math.log(116))
    s = model.update(idx, losses, n_classes=116)
    assert s["gmm_gated"] is True and s["mean_p"] == 1.0
    s = NoisyLabelModel(500, space="loss", noisy_floor=1e-3).update(idx, losses)  # a number: a fixed floor
    assert s["gmm_gated"] is False and s["mean_p"] < 1.0
    assert NoisyLabelModel(500, noisy_floor="none").floor(116) is None
    for bad in ({"space": "logit"}, {"noisy_floor": "log_n"}):
        with pytest.raises(ValueError, match="gmm_"):
            NoisyLabelModel(10, **bad)


def test_model_counts_the_fits_that_found_a_noisy_mode():
    """``noisy_fits`` (read by ``recluster_if: never_noisy``): gated and degenerate fits do not count, a noisy
    component above the floor does; a checkpoint keeps the count, an older one (without it) reads as 0."""
    clean_only, _ = _bulk_tail_and_wrong(wrong=0.0, n=500)
    noisy, _ = _bulk_tail_and_wrong(wrong=0.18, n=500)
    idx = torch.arange(500)
    model = NoisyLabelModel(500, space="loss", noisy_floor="log_k")
    model.update(idx, clean_only, n_classes=116)
    assert model.noisy_fits == 0 and model.stats()["noisy_fits"] == 0
    with pytest.warns(UserWarning, match="not fitted"):
        model.update(idx[:1], clean_only[:1], n_classes=116)  # degenerate: one loss
    assert model.noisy_fits == 0
    model.update(idx, noisy, n_classes=116)
    assert model.noisy_fits == 1
    model.update(idx, clean_only, n_classes=116)  # a later gated epoch does not undo it
    state = model.state_dict()
    assert state["noisy_fits"] == 1
    restored = NoisyLabelModel(500, space="loss", noisy_floor="log_k")
    restored.load_state_dict(state)
    assert restored.noisy_fits == 1
    del state["noisy_fits"]
    restored.load_state_dict(state)
    assert restored.noisy_fits == 0
    off = NoisyLabelModel(500, enabled=False)
    off.update(idx, noisy)
    assert off.noisy_fits == 0


def test_noisy_floor_setting_reads_the_yaml_key_once():
    """``gmm_noisy_floor`` is read in one place (NoisyLabelModel and recluster_if both use it)."""
    assert noisy_floor_setting(None) is None and noisy_floor_setting("none") is None
    assert noisy_floor_setting("log_k") == "log_k" and noisy_floor_setting(2.5) == 2.5
    for bad in ("null", "logk", "auto"):
        with pytest.raises(ValueError, match="gmm_noisy_floor must be none, log_k or a number"):
            noisy_floor_setting(bad)
    assert NoisyLabelModel(4, noisy_floor="none").noisy_floor is None
    with pytest.raises(ValueError, match="gmm_noisy_floor"):
        NoisyLabelModel(4, noisy_floor="null")


def test_noisy_min_fraction_gates_a_handful_of_outliers_only():
    """``gmm_noisy_min_fraction``: a noisy side holding fewer than that share of the losses is no noisy mode
    (p = 1, and ``recluster_if: never_noisy`` does not count it); a population of wrong labels is kept."""
    floor = math.log(116)
    few, _ = _bulk_tail_and_wrong(wrong=0.01)  # 20 outlying losses of 2,000
    plain = fit_clean_gmm(few, space="loss", noisy_floor=floor)
    assert not plain.gated and 0.005 < plain.noisy_fraction < 0.03  # above the floor: counted as a mode
    gated = fit_clean_gmm(few, space="loss", noisy_floor=floor, noisy_min_fraction=0.05)
    assert gated.gated and torch.equal(gated.p, torch.ones_like(gated.p))
    assert gated.noisy_fraction == plain.noisy_fraction  # reported before the gate
    many, _ = _bulk_tail_and_wrong(wrong=0.18)
    kept = fit_clean_gmm(many, space="loss", noisy_floor=floor, noisy_min_fraction=0.05)
    assert not kept.gated and torch.equal(kept.p, fit_clean_gmm(many, space="loss", noisy_floor=floor).p)
    idx = torch.arange(2000)
    counted = NoisyLabelModel(2000, space="loss", noisy_floor="log_k")
    ignored = NoisyLabelModel(2000, space="loss", noisy_floor="log_k", noisy_min_fraction=0.05)
    counted.update(idx, few, n_classes=116)
    s = ignored.update(idx, few, n_classes=116)
    assert counted.noisy_fits == 1 and ignored.noisy_fits == 0
    assert s["gmm_gated"] is True and 0.005 < s["gmm_noisy_fraction"] < 0.03 and s["mean_p"] == 1.0
    for bad in (-0.1, 1.0, True, "0.05"):
        with pytest.raises(ValueError, match="gmm_noisy_min_fraction"):
            fit_clean_gmm(few, noisy_min_fraction=bad)
        with pytest.raises(ValueError, match="gmm_noisy_min_fraction"):
            NoisyLabelModel(10, noisy_min_fraction=bad)  # refused at the start of a run
