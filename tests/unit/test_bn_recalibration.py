"""BN re-estimation through torch.optim.swa_utils.update_bn: the same buffers as our own loop had."""

import pytest
import torch

from speechbrain_ssrl.bn_recalibration import recalibrate_bn

torch.set_num_threads(1)


@torch.no_grad()
def _old_recalibrate_bn(model, forward, batches):
    """The hand-written loop that update_bn replaced (reference; the model has BN layers, batches are given)."""
    saved = [(m, m.momentum) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    mode = model.training
    for bn, _ in saved:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    n = 0
    for x in batches:
        forward(x)
        n += 1
    for bn, m in saved:
        bn.momentum = m
    model.train(mode)
    return n


class _Net(torch.nn.Module):
    """A small ECAPA-like stack: conv + BN1d, an affine-free BN and a BN with its own momentum."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm1d(8)
        self.bn2 = torch.nn.BatchNorm1d(8, affine=False, momentum=0.3)
        self.lin = torch.nn.Linear(8, 5)
        self.bn3 = torch.nn.BatchNorm1d(5, momentum=0.01)

    def forward(self, x):
        h = self.bn2(torch.relu(self.bn1(self.conv(x)))).mean(-1)
        return self.bn3(self.lin(h))


def _features(x):  # stands in for the Fbank front end computed outside the encoder
    return torch.stack([x[:, i::4][:, :50] for i in range(4)], 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_update_bn_gives_the_old_buffers_bit_for_bit(seed, training):
    torch.manual_seed(seed)
    a = _Net()
    a.train()
    for _ in range(5):  # "noisy" statistics to be replaced
        a(_features(torch.randn(16, 200) * 7 + 3))
    a.train(training)
    b = _Net()
    b.load_state_dict(a.state_dict())
    b.train(training)
    g = torch.Generator().manual_seed(100 + seed)
    batches = [torch.randn(int(torch.randint(2, 12, (1,), generator=g)), 200, generator=g) for _ in range(7)]
    n_new = recalibrate_bn(a, lambda x: a(_features(x)), iter(batches))
    n_old = _old_recalibrate_bn(b, lambda x: b(_features(x)), iter(batches))
    assert n_new == n_old == 7
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k  # running means / vars / num_batches_tracked, weights untouched
    assert [m.momentum for m in a.modules() if hasattr(m, "momentum")] == [0.1, 0.3, 0.01]
    assert a.training == training and all(m.training == training for m in a.modules())


def test_no_batch_or_no_bn_leaves_the_model_untouched():
    torch.manual_seed(0)
    net = _Net()
    net.train()
    net(_features(torch.randn(8, 200)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    assert recalibrate_bn(net, lambda x: net(_features(x)), []) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and not net.training
    lin = torch.nn.Linear(3, 3)
    assert recalibrate_bn(lin, lin, [torch.randn(2, 3)]) == 0


def test_a_failing_batch_restores_momenta_and_mode():
    net = _Net()
    net.eval()

    def forward(x):
        if x.shape[0] == 3:
            raise RuntimeError("broken batch")
        return net(_features(x))

    with pytest.raises(RuntimeError, match="broken batch"):
        recalibrate_bn(net, forward, [torch.randn(4, 200), torch.randn(3, 200)])
    assert [m.momentum for m in net.modules() if hasattr(m, "momentum")] == [0.1, 0.3, 0.01]
    assert not any(m.training for m in net.modules())
