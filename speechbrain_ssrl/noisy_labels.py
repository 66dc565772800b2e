"""Noisy-label modelling: a 2-component GMM on the teacher's log-loss gives clean probabilities.

At the end of every SSRL epoch the teacher's per-utterance loss ``λ_n = CE(s·cos, ỹ_n)`` is turned
into a probability ``p_n`` that the pseudo label is clean (as in the authors' release):

    u = log(λ + eps)                                  eps = 1e-12
    u ← clip(u, max(quantile(u, 0.001), -20), quantile(u, 0.999))
    fit a 2-component 1-D GaussianMixture on u         (max_iter 500, tol 1e-5, fixed seed)
    p = posterior of the component with the smaller mean

``p`` weights the student loss (``losses.weighted_mean``). The fit uses scikit-learn's
``GaussianMixture`` (k-means initialisation, ``random_state=seed``), so it is deterministic and,
given the same all-gathered losses, identical on every DDP rank.

Three options (neither paper nor release; issue #13), all off by default:

* ``space="loss"`` fits the GMM on the loss itself (clipped at its ``high_q`` quantile), as DivideMix
  does, instead of on its log. In the log domain the many near-zero losses of correct labels spread over
  tens of nats and form a wide component of their own, so the split can fall inside the correct labels;
  wrong labels are a narrow mode of large losses, which the loss domain isolates.
* ``noisy_floor``: when the "noisy" component's mean *loss* (``log_loss``: the exp of its mean, a
  geometric mean) is not above this value there is no noisy mode and every ``p`` is 1 (``gated``).
  ``NoisyLabelModel(noisy_floor="log_k")`` uses ``log K`` (K active clusters): the loss of a uniform
  guess, which a label the teacher favours stays below. A 2-component fit always splits, also when
  every label is correct.
* ``noisy_min_fraction``: when fewer than this fraction of the fitted losses fall on the noisy side
  (``p < 0.5``) there is no noisy mode either, and every ``p`` is 1 (``gated``). A handful of outlying
  losses is not a population of wrong labels: at MiniVox scale such "modes" held 0.5-1 % of the
  utterances, the label-correction benches' noisy modes 12-30 % in their first epoch (recipe README,
  seventeenth session).

``bench/clean_detector_probe.py`` measures the rules on finished runs.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from speechbrain_ssrl.state import StateRecoverable

from speechbrain_ssrl.label_queue import unique_last

__all__ = ["GMMFit", "fit_clean_gmm", "clean_probability", "NoisyLabelModel", "GMM_SPACES", "noisy_floor_setting"]

GMM_SPACES = ("log_loss", "loss")

# losses slightly below zero are float round-off of a cross-entropy; clearly negative ones are a bug
_NEGATIVE_TOL = 1e-3


@dataclasses.dataclass
class GMMFit:
    """Result of ``fit_clean_gmm``.

    ``p`` is the clean probability of every input loss (float32, the input's device). The other
    fields are plain Python values for logging; ``means`` / ``variances`` / ``weights`` are
    ``(clean, noisy)`` pairs (component with the smaller mean first, in the fitted domain: log loss or
    loss), all ``nan`` when no GMM was fitted (``degenerate`` then says why). ``gated``: the noisy
    component's mean loss was not above ``noisy_floor``, or less than ``noisy_min_fraction`` of the losses
    fell on its side, so ``p`` is 1 everywhere. ``noisy_fraction``: the share of the losses with a clean
    posterior below 0.5, before any gate.
    """

    p: torch.Tensor
    means: Tuple[float, float] = (float("nan"), float("nan"))
    variances: Tuple[float, float] = (float("nan"), float("nan"))
    weights: Tuple[float, float] = (float("nan"), float("nan"))
    converged: bool = False
    n_iter: int = 0
    clip_low: float = float("nan")
    clip_high: float = float("nan")
    degenerate: Optional[str] = None
    gated: bool = False
    noisy_fraction: float = float("nan")

    def stats(self) -> Dict[str, Any]:
        """Flat dict of the scalar fields (for ``history.csv``)."""
        return {
            "gmm_mean_clean": self.means[0],
            "gmm_mean_noisy": self.means[1],
            "gmm_var_clean": self.variances[0],
            "gmm_var_noisy": self.variances[1],
            "gmm_weight_clean": self.weights[0],
            "gmm_weight_noisy": self.weights[1],
            "gmm_converged": self.converged,
            "gmm_n_iter": self.n_iter,
            "gmm_clip_low": self.clip_low,
            "gmm_clip_high": self.clip_high,
            "gmm_degenerate": self.degenerate,
            "gmm_gated": self.gated,
            "gmm_noisy_fraction": self.noisy_fraction,
        }


def _losses_to_numpy(losses) -> Tuple[np.ndarray, torch.device, torch.Size]:
    t = torch.as_tensor(losses).detach()
    device, shape = t.device, t.shape
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"losses must be a real tensor, got {t.dtype}")
    x = t.to("cpu", torch.float64).reshape(-1).numpy()
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"losses contain {n_nan} NaN and {n_inf} inf values out of {x.size}: "
            "the teacher loss diverged or a cosine was masked for the target class"
        )
    if x.size and x.min() < -_NEGATIVE_TOL:
        raise ValueError(f"losses must be >= 0 (cross-entropies), got a minimum of {x.min():.4g}")
    return np.maximum(x, 0.0), device, shape


def _check_min_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"gmm_noisy_min_fraction: {value!r} must be a fraction in [0, 1); fix the yaml key")
    return float(value)


def fit_clean_gmm(
    losses,
    *,
    max_iter: int = 500,
    tol: float = 1e-5,
    eps: float = 1e-12,
    low_clip_floor: float = -20.0,
    low_q: float = 0.001,
    high_q: float = 0.999,
    seed: int = 0,
    reg_covar: float = 1e-6,
    space: str = "log_loss",
    noisy_floor: Optional[float] = None,
    noisy_min_fraction: float = 0.0,
) -> GMMFit:
    """Fit the clean / noisy GMM on ``log(losses + eps)`` (or the losses); see the module docstring.

    Arguments
    ---------
    losses : tensor or array of per-sample losses ``>= 0`` (any shape; ``p`` has the same shape)
    max_iter, tol, reg_covar : ``sklearn.mixture.GaussianMixture`` settings
    eps : added to the loss before the log
    low_clip_floor : the lower clip is ``max(quantile(u, low_q), low_clip_floor)``
    low_q, high_q : quantiles of ``u`` used as clip bounds
    seed : ``random_state`` of the GMM
    space : ``log_loss`` (release) or ``loss`` (the losses, clipped above at their ``high_q`` quantile)
    noisy_floor : ``None`` (release) or a loss: a noisy component whose mean loss is not above it gives
        ``p = 1`` everywhere (``gated``)
    noisy_min_fraction : 0 (release) or a fraction: fewer losses than this share with a clean posterior
        below 0.5 also give ``p = 1`` everywhere (``gated``)

    Degenerate input: NaN / inf / clearly negative losses raise ``ValueError``; fewer than two
    losses, or losses that are all equal after clipping, give ``p = 1`` everywhere with a warning.
    """
    if not 0.0 <= low_q < high_q <= 1.0:
        raise ValueError(f"need 0 <= low_q < high_q <= 1, got {low_q}, {high_q}")
    _check_min_fraction(noisy_min_fraction)
    if space not in GMM_SPACES:
        raise ValueError(f"gmm_space must be one of {GMM_SPACES}, got {space!r}")
    x, device, shape = _losses_to_numpy(losses)

    def ones(reason: str) -> GMMFit:
        if x.size:
            warnings.warn(f"noisy-label GMM not fitted ({reason}): every clean probability set to 1")
        return GMMFit(p=torch.ones(shape, dtype=torch.float32, device=device), degenerate=reason)

    if x.size < 2:
        return ones(f"{x.size} loss value(s), need at least 2")
    if space == "log_loss":
        u = np.log(x + eps)
        low = max(float(np.quantile(u, low_q)), float(low_clip_floor))
    else:
        u = x
        low = float(u.min())
    high = float(np.quantile(u, high_q))
    if high < low:  # everything below the floor
        high = low
    u = np.clip(u, low, high)
    if float(u.max() - u.min()) <= 1e-12 * max(1.0, float(np.abs(u).max())):
        fit = ones("all log-losses equal after clipping")
        fit.clip_low, fit.clip_high = low, high
        return fit

    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(
        n_components=2,
        covariance_type="full",
        max_iter=int(max_iter),
        tol=float(tol),
        reg_covar=float(reg_covar),
        random_state=int(seed),
    )
    with warnings.catch_warnings():
        # non-convergence is reported in the returned fit (``converged``), not as a warning per epoch
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        gmm.fit(u[:, None])
    means = gmm.means_.reshape(2)
    order = np.argsort(means, kind="stable")  # (clean, noisy)
    clean = int(order[0])
    post = gmm.predict_proba(u[:, None])[:, clean]
    variances = gmm.covariances_.reshape(2)
    noisy_mean_loss = float(means[order[1]])
    if space == "log_loss":
        noisy_mean_loss = float(np.exp(noisy_mean_loss)) - eps
    noisy_fraction = float((post < 0.5).mean())
    below_floor = noisy_floor is not None and noisy_mean_loss <= float(noisy_floor)
    gated = below_floor or noisy_fraction < float(noisy_min_fraction)
    if gated:
        post = np.ones_like(post)
    return GMMFit(
        p=torch.from_numpy(post.astype(np.float32)).reshape(shape).to(device),
        means=(float(means[order[0]]), float(means[order[1]])),
        variances=(float(variances[order[0]]), float(variances[order[1]])),
        weights=(float(gmm.weights_[order[0]]), float(gmm.weights_[order[1]])),
        converged=bool(gmm.converged_),
        n_iter=int(gmm.n_iter_),
        clip_low=low,
        clip_high=high,
        gated=bool(gated),
        noisy_fraction=noisy_fraction,
    )


def clean_probability(losses, **gmm_kwargs: Any) -> torch.Tensor:
    """Clean probability of each loss (float32 tensor, same shape and device as ``losses``).

    Shorthand for ``fit_clean_gmm(losses, **gmm_kwargs).p``; see there for the keyword arguments and degenerate
    cases.
    """
    return fit_clean_gmm(losses, **gmm_kwargs).p


def noisy_floor_setting(value: Optional[float | str]) -> Optional[float | str]:
    """The yaml's ``gmm_noisy_floor``, read in one place: ``None`` (also ``"none"``: the release, no floor),
    ``"log_k"``, or the value unchanged (a loss). Anything else is refused with one line naming the key."""
    if value is None or value == "none":
        return None
    if isinstance(value, str) and value != "log_k":
        raise ValueError(f"gmm_noisy_floor must be none, log_k or a number, got {value!r}")
    return value


class NoisyLabelModel(StateRecoverable):
    """Per-utterance clean probabilities ``p`` (N,), initialised to 1, refitted every epoch.

    Arguments
    ---------
    n : number of training utterances
    enabled : ``False`` is the "without noisy-label modelling" ablation: ``update`` fits nothing
        and every weight stays 1
    max_iter, tol, eps, low_clip_floor, low_q, high_q, seed, reg_covar, space : see ``fit_clean_gmm``
    noisy_floor : ``None`` (release), a loss, or ``"log_k"``: ``log`` of the ``n_classes`` given to
        ``update`` (the active clusters), see ``fit_clean_gmm``
    noisy_min_fraction : see ``fit_clean_gmm`` (0 = release)

    ``p`` lives on the CPU; ``weights(indices)`` returns it on the device of ``indices``.
    """

    def __init__(
        self,
        n: int,
        enabled: bool = True,
        *,
        max_iter: int = 500,
        tol: float = 1e-5,
        eps: float = 1e-12,
        low_clip_floor: float = -20.0,
        low_q: float = 0.001,
        high_q: float = 0.999,
        seed: int = 0,
        reg_covar: float = 1e-6,
        space: str = "log_loss",
        noisy_floor: Optional[float | str] = None,
        noisy_min_fraction: float = 0.0,
    ) -> None:
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if space not in GMM_SPACES:
            raise ValueError(f"gmm_space must be one of {GMM_SPACES}, got {space!r}")
        self.noisy_floor: Optional[float | str] = noisy_floor_setting(noisy_floor)
        self.enabled: bool = bool(enabled)
        self.gmm_kwargs: Dict[str, Any] = dict(
            max_iter=max_iter,
            tol=tol,
            eps=eps,
            low_clip_floor=low_clip_floor,
            low_q=low_q,
            high_q=high_q,
            seed=seed,
            reg_covar=reg_covar,
            space=space,
            noisy_min_fraction=_check_min_fraction(noisy_min_fraction),
        )
        self.p: torch.Tensor = torch.ones(int(n), dtype=torch.float32)
        self.n_updates: int = 0
        #: fits that found a noisy mode (fitted, not degenerate, not gated by ``noisy_floor`` / ``noisy_min_fraction``)
        self.noisy_fits: int = 0
        self._last: Dict[str, Any] = {"n_fitted": 0, "mean_p_fitted": float("nan")}
        self._last.update(GMMFit(p=torch.ones(0)).stats())

    @property
    def n(self) -> int:
        return self.p.numel()

    def _check_indices(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(indices)
        if idx.dim() != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"indices must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}")
        idx = idx.to("cpu", torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise IndexError(f"utterance indices must be in [0, {self.n})")
        return idx

    def floor(self, n_classes: Optional[int] = None) -> Optional[float]:
        """The loss floor of the noisy component for this fit (``None``: no gate)."""
        if self.noisy_floor is None:
            return None
        if self.noisy_floor == "log_k":
            if n_classes is None or int(n_classes) < 2:
                raise ValueError(f"gmm_noisy_floor: log_k needs the number of active clusters (>= 2), got {n_classes}")
            return float(np.log(int(n_classes)))
        return float(self.noisy_floor)

    def update(self, indices, losses, n_classes: Optional[int] = None) -> Dict[str, Any]:
        """Fit the GMM on the losses of ``indices`` and set their ``p``; others keep theirs.

        Repeated indices count once (their last loss), so padded DDP batches do not bias the fit.
        ``n_classes`` (active clusters) sets the ``log_k`` floor. Returns ``stats()``. Disabled:
        nothing is fitted and ``p`` stays 1.
        """
        idx = self._check_indices(indices)
        loss = torch.as_tensor(losses).detach().to("cpu").reshape(-1)
        if loss.numel() != idx.numel():
            raise ValueError(f"{loss.numel()} losses for {idx.numel()} indices")
        self.n_updates += 1
        if not self.enabled:
            return self.stats()
        keep = unique_last(idx)
        idx, loss = idx[keep], loss[keep]
        fit = fit_clean_gmm(loss, noisy_floor=self.floor(n_classes), **self.gmm_kwargs)
        self.p[idx] = fit.p.to(torch.float32)
        self.noisy_fits += int(fit.degenerate is None and not fit.gated)
        self._last = {"n_fitted": int(idx.numel()), "mean_p_fitted": float(fit.p.mean()) if idx.numel() else float("nan")}
        self._last.update(fit.stats())
        return self.stats()

    def weights(self, indices, device: Optional[torch.device | str] = None) -> torch.Tensor:
        """Clean probabilities of ``indices`` (float32), on ``device`` (default: that of ``indices``)."""
        target = torch.as_tensor(indices).device if device is None else device
        return self.p[self._check_indices(indices)].to(target)

    def stats(self) -> Dict[str, Any]:
        """Plain-Python summary for logging: ``mean_p`` and ``frac_noisy`` (p < 0.5) over all N,
        the size and mean p of the last fitted set, and the last GMM's parameters (``gmm_*``)."""
        out: Dict[str, Any] = {
            "enabled": self.enabled,
            "n_updates": self.n_updates,
            "noisy_fits": self.noisy_fits,
            "mean_p": float(self.p.mean()) if self.n else float("nan"),
            "frac_noisy": float((self.p < 0.5).double().mean()) if self.n else float("nan"),
        }
        out.update(self._last)
        return out

    def detector_confusion(self, indices, is_clean_truth, threshold: float = 0.5) -> Dict[str, int]:
        """Confusion counts of the clean detector ``p >= threshold`` against the truth (diagnostics).

        Positive = "clean": TP clean & detected clean, FP noisy but detected clean, TN noisy &
        detected noisy, FN clean but detected noisy. ``is_clean_truth`` (bool, like ``indices``)
        is, e.g., "the pseudo label agrees with the true speaker under the cluster→speaker map".
        """
        idx = self._check_indices(indices)
        truth = torch.as_tensor(is_clean_truth).to("cpu").reshape(-1).bool()
        if truth.numel() != idx.numel():
            raise ValueError(f"{truth.numel()} truth values for {idx.numel()} indices")
        pred = self.p[idx] >= threshold
        return {
            "TP": int((pred & truth).sum()),
            "FP": int((pred & ~truth).sum()),
            "TN": int((~pred & ~truth).sum()),
            "FN": int((~pred & truth).sum()),
        }

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and plain Python values only (``torch.load(weights_only=True)`` safe)."""
        return {
            "p": self.p.clone(),
            "enabled": self.enabled,
            "n_updates": self.n_updates,
            "noisy_fits": self.noisy_fits,
            "last": dict(self._last),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``p`` and the counters; ``enabled`` and the GMM settings stay as constructed."""
        p = torch.as_tensor(state["p"])
        if p.shape != self.p.shape:
            raise ValueError(
                f"checkpointed p has {p.numel()} entries, this model {self.n}: was the training set changed?"
            )
        self.p = p.to("cpu", torch.float32).clone()
        self.n_updates = int(state["n_updates"])
        self.noisy_fits = int(state.get("noisy_fits", 0))  # absent in checkpoints of older versions
        self._last = dict(state["last"])


    def __repr__(self) -> str:
        return f"NoisyLabelModel(n={self.n}, enabled={self.enabled}, n_updates={self.n_updates})"
