"""initial_clustering reads each CSV row's segment (start / stop), not the start of its file: the rows that
data_format folder / csv write for the segments of one long recording get their own embeddings."""

import numpy as np
import soundfile as sf
import torch

from speechbrain_ssrl.initial_clustering import embed_training_set


def test_segments_of_one_recording_are_read_where_they_are(tmp_path):
    sr = 16000
    t = np.arange(2 * sr) / sr
    parts = [0.3 * np.sin(2 * np.pi * f * t) for f in (200.0, 500.0, 900.0)]  # three 2 s 'speakers'
    wav = str(tmp_path / "long.wav")
    sf.write(wav, np.concatenate(parts).astype(np.float32), sr, subtype="FLOAT")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        "ID,duration,wav,start,stop,spk_id\n"
        + "".join(f"seg{k},2.0,{wav},{k * 2 * sr},{(k + 1) * 2 * sr},\n" for k in range(3))
    )

    def dominant_frequency(wavs, lens):  # a deterministic 'embedding': the strongest frequency, and 1
        spec = torch.fft.rfft(wavs, dim=1).abs()
        f = spec.argmax(dim=1).float() * sr / wavs.shape[1]
        return torch.stack([f / 1000.0, torch.ones_like(f)], dim=1)

    ids, emb = embed_training_set(dominant_frequency, str(csv_path), progress=False, max_seconds=1.5)
    assert ids == ["seg0", "seg1", "seg2"]
    freq = (emb[:, 0] / emb[:, 1]) * 1000.0  # undo the L2 normalisation
    assert torch.allclose(freq, torch.tensor([200.0, 500.0, 900.0]), atol=2.0), freq
