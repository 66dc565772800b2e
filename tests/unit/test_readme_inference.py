"""The inference examples of README.md and the recipe README run as written (on a small export at the path
they name, offline) and read audio with ``encoder.load_audio``, never ``torchaudio.load``."""

import os
import re

import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from speechbrain_ssrl.export import export_encoder

torch.set_num_threads(1)
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READMES = ["README.md", "recipes/VoxCeleb/SSRL/README.md"]


def _inference_blocks(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if "from_hparams" in b or "load_pretrained" in b]


@pytest.mark.parametrize("readme", READMES)
def test_readme_inference_examples_run(readme, tmp_path, monkeypatch):
    import soundfile as sf
    from speechbrain.utils import fetching

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(fetching, "download_file_hf", refuse)
    monkeypatch.setattr(fetching, "download_file", refuse)
    blocks = _inference_blocks(readme)
    assert blocks, f"{readme} has no inference example"
    torch.manual_seed(0)
    model = ECAPA_TDNN(input_size=80, channels=[16, 16, 16, 16, 48], lin_neurons=8, attention_channels=8, se_channels=8)
    export_encoder(model.eval(), tmp_path / "results" / "ssrl_ecapa" / "1986" / "pretrained")
    g = torch.Generator().manual_seed(1)
    for name in ("example.wav", "enrol.wav", "test.wav", "utt.wav"):
        sf.write(str(tmp_path / name), (0.1 * torch.randn(16000, generator=g)).numpy(), 16000)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        assert "torchaudio" not in block
        ns = {"wavs": 0.1 * torch.randn(2, 16000, generator=g), "wav_lens": torch.tensor([1.0, 0.7])}
        exec(compile(block, readme, "exec"), ns)  # noqa: S102 - the README's own example
        embs = [v for k, v in ns.items() if k.startswith(("emb", "embedding")) and isinstance(v, torch.Tensor)]
        assert embs and all(e.shape[-1] == 8 and e.dim() == 3 for e in embs)
        if "score" in ns:
            assert -1.0 <= float(ns["score"]) <= 1.0
