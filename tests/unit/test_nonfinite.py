"""SSLBrainBase.fit_batch: a non-finite loss skips the whole step; N in a row stop the run."""

import functools
import logging

import pytest
import torch
from speechbrain.utils.epoch_loop import EpochCounter

from speechbrain_ssrl.brains.base import NonFiniteLossError, SSLBrainBase
from speechbrain_ssrl.pseudo_labels import PseudoLabelState

torch.set_num_threads(1)


class ToyBrain(SSLBrainBase):
    """A linear model whose compute_objectives records pseudo labels, as SSRL does."""

    def compute_forward(self, batch, stage):
        return self.modules.lin(batch["x"])

    def compute_objectives(self, predictions, batch, stage):
        idx = batch["idx"]
        self.state.record(idx, torch.zeros_like(idx), torch.ones(idx.numel()))
        loss = predictions.pow(2).mean()
        return loss * float(batch["scale"])

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.batch_ends += 1  # stands for the EMA teacher / DINO centre updates


def _brain(limit=3):
    torch.manual_seed(0)
    brain = ToyBrain(
        modules={"lin": torch.nn.Linear(3, 1)},
        opt_class=functools.partial(torch.optim.SGD, lr=0.1),
        hparams={"epoch_counter": EpochCounter(1), "max_nonfinite_in_a_row": limit},
        run_opts={"device": "cpu"},
    )
    brain.init_optimizers()
    brain.state = PseudoLabelState(torch.zeros(20, dtype=torch.long), 2)
    brain.batch_ends = 0
    return brain


def _batch(i, scale=1.0):
    return {"x": torch.randn(4, 3), "idx": torch.arange(4 * i, 4 * i + 4) % 20, "scale": scale}


def test_nonfinite_loss_skips_step_records_and_updates(caplog):
    brain = _brain(limit=3)
    w = lambda: brain.modules.lin.weight.detach().clone()  # noqa: E731
    brain.step = 1
    brain.fit_batch(_batch(0))
    assert brain.optimizer_step == 1 and brain.batch_ends == 1 and brain.state.n_recorded() == 4
    before = w()
    for k, bad in enumerate((float("nan"), float("inf")), start=2):
        brain.step = k
        with caplog.at_level(logging.WARNING):
            loss = brain.fit_batch(_batch(k, bad))
        assert not torch.isfinite(loss)
        assert torch.equal(w(), before)  # no backward, no optimiser step
        assert brain.optimizer_step == 1 and brain.batch_ends == 1  # no EMA / centre update
        assert brain.state.n_recorded() == 4  # the skipped batch's pseudo-label records were dropped
        assert all(p.grad is None or not p.grad.abs().sum() for p in brain.modules.parameters())
    assert "non-finite loss" in caplog.text and "skipped" in caplog.text and "2 in a row" in caplog.text
    brain.step = 4
    brain.fit_batch(_batch(4))  # a finite loss resets the count
    assert brain.optimizer_step == 2 and brain.nonfinite_in_a_row == 0 and brain.state.n_recorded() == 8
    assert not torch.equal(w(), before)


def test_nonfinite_losses_in_a_row_stop_the_run():
    brain = _brain(limit=3)
    brain.step = 1
    brain.fit_batch(_batch(0, float("nan")))
    brain.fit_batch(_batch(1, float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite losses in a row \(max_nonfinite_in_a_row=3\)"):
        brain.fit_batch(_batch(2, float("nan")))
    assert brain.optimizer_step == 0 and brain.state.n_recorded() == 0


def test_discard_records():
    st = PseudoLabelState(torch.zeros(6, dtype=torch.long), 2)
    st.record(torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([0.1, 0.2]))
    mark = st.record_mark()
    st.record(torch.tensor([2, 3]), torch.tensor([0, 0]), torch.tensor([0.3, 0.4]))
    assert st.discard_records(mark) == 2 and st.n_recorded() == 2
    assert st.discard_records(st.record_mark()) == 0
    sd = st.state_dict()
    assert sd["rec_idx"].tolist() == [0, 1]
