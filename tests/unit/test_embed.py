"""python -m speechbrain_ssrl.embed (issue #15, item 3): embeddings of a folder or CSV with an exported model
equal EncoderClassifier.encode_batch of each file alone; batches, resume, CSV ranges, failures, refusals."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain_ssrl import embed
from speechbrain_ssrl.export import export_encoder

torch.set_num_threads(1)
os.environ["HF_HUB_OFFLINE"] = "1"
SMALL = dict(input_size=80, channels=[32, 32, 32, 32, 96], lin_neurons=16, attention_channels=16, se_channels=16)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random ECAPA with non-trivial BN statistics, exported like a trained teacher."""
    torch.manual_seed(0)
    m = ECAPA_TDNN(**SMALL)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.train()
        for _ in range(3):
            m(torch.randn(4, 120, 80) * 2 + 1)
    return export_encoder(m.eval(), tmp_path_factory.mktemp("model") / "pretrained")


@pytest.fixture(scope="module")
def classifier(model, tmp_path_factory):
    from speechbrain.inference.speaker import EncoderClassifier

    return EncoderClassifier.from_hparams(source=os.path.abspath(model), savedir=str(tmp_path_factory.mktemp("clf")))


def speech(seconds, sr=16000, seed=0, channels=1):
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = (0.2 * np.sin(2 * np.pi * (110 + 30 * seed) * t) + 0.05 * g.normal(size=t.size)).astype(np.float32)
    return np.stack([x, 0.5 * x], 1) if channels > 1 else x


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "a.wav", speech(3.0, seed=1), 16000)
    sf.write(d / "b.wav", speech(3.0, seed=2), 16000)  # the same length as a.wav: one batch
    sf.write(d / "sub" / "c.flac", speech(4.5, seed=3), 16000)
    sf.write(d / "sub" / "d.wav", speech(2.0, seed=4), 16000)
    return d


def encode(classifier, x):
    with torch.no_grad():
        return classifier.encode_batch(torch.from_numpy(np.ascontiguousarray(x))[None], torch.ones(1))[0, 0].numpy()


def test_folder_embeddings_equal_encode_batch_of_each_file(model, classifier, folder, tmp_path):
    out = tmp_path / "emb"
    assert embed.main(["--model", str(model), "--audio", str(folder), "--out", str(out), "--device", "cpu", "--noprogressbar"]) == 0
    ids = (out / "ids.txt").read_text().split()
    assert ids == ["a.wav", "b.wav", "sub/c.flac", "sub/d.wav"]
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (4, 16) and emb.dtype == np.float32
    for i, uid in enumerate(ids):
        ref = encode(classifier, sf.read(folder / uid, dtype="float32")[0])
        assert np.abs(emb[i] - ref).max() < 1e-5, uid
    assert not np.allclose(emb[0], emb[1])
    # padded batches (--pad_batches) do change the shorter items: the reason exact batching is the default
    padded = embed.embed_items(_fn(model), embed.list_items(str(folder)), str(tmp_path / "pad"), pad_batches=True, progress=False)
    assert padded["n"] == 4
    pe = np.load(tmp_path / "pad" / "embeddings.npy")
    assert np.abs(pe[2] - emb[2]).max() < 1e-5  # the longest item has no padding
    assert np.abs(pe[3] - emb[3]).max() > 1e-3


def _fn(model):
    from speechbrain_ssrl.export import load_embed_fn

    return load_embed_fn(str(model))[0]


def test_csv_ranges_other_rates_and_formats(model, classifier, tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    long = speech(8.0, seed=5)
    sf.write(d / "long.wav", long, 16000)
    long = sf.read(d / "long.wav", dtype="float32")[0]  # as stored (16-bit)
    sf.write(d / "stereo44k.flac", speech(3.0, sr=44100, seed=6, channels=2), 44100)
    x44 = sf.read(d / "stereo44k.flac", dtype="float32")[0]
    lst = tmp_path / "list.csv"
    lst.write_text("ID,wav,start,stop\nfirst,rec/long.wav,1.0,3.5\nrest,rec/long.wav,3.5,\nst,rec/stereo44k.flac,,\nmissing,rec/nope.wav,,\n")
    out = tmp_path / "emb"
    summary = embed.embed_items(_fn(model), embed.list_items(str(lst)), str(out), progress=False)
    assert summary["n"] == 3 and summary["failed"] == 1
    ids = (out / "ids.txt").read_text().split()
    assert ids == ["first", "rest", "st"]
    emb = np.load(out / "embeddings.npy")
    assert np.abs(emb[0] - encode(classifier, long[16000:56000])).max() < 1e-5
    assert np.abs(emb[1] - encode(classifier, long[56000:])).max() < 1e-5
    from speechbrain_ssrl.embeddings import resample

    ref = encode(classifier, resample(torch.from_numpy(x44.mean(1)), 44100, 16000).numpy())
    assert np.abs(emb[2] - ref).max() < 1e-5
    failed = (out / "failed.tsv").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith("missing\t")
    # a SpeechBrain CSV (duration column): start / stop in samples
    sb_csv = tmp_path / "train.csv"
    sb_csv.write_text(f"ID,duration,wav,start,stop,spk_id\nseg,2.5,{d / 'long.wav'},16000,56000,\n")
    embed.embed_items(_fn(model), embed.list_items(str(sb_csv)), str(tmp_path / "emb2"), progress=False)
    assert np.abs(np.load(tmp_path / "emb2" / "embeddings.npy")[0] - emb[0]).max() < 1e-6


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_m4a_is_decoded_with_ffmpeg(model, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    sf.write(tmp_path / "x.wav", speech(3.0, seed=7), 16000)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(tmp_path / "x.wav"), "-c:a", "aac", str(d / "x.m4a")], check=True)
    s = embed.embed_items(_fn(model), embed.list_items(str(d)), str(tmp_path / "e"), progress=False)
    assert s["n"] == 1 and s["failed"] == 0


def test_resume_embeds_only_what_is_missing(model, folder, tmp_path, monkeypatch):
    out = str(tmp_path / "emb")
    items = embed.list_items(str(folder))
    full = embed.embed_items(_fn(model), items, out, batch_seconds=3.0, progress=False)  # one part per few items
    ref = np.load(os.path.join(out, "embeddings.npy"))
    parts = sorted(os.listdir(os.path.join(out, "parts")))
    assert len(parts) >= 4  # several parts (.npy + .json each)
    os.remove(os.path.join(out, "parts", parts[-1]))  # the last part was cut by a kill
    calls = []
    real = embed.read_item
    monkeypatch.setattr(embed, "read_item", lambda it, *a: calls.append(it.uid) or real(it, *a))
    again = embed.embed_items(_fn(model), items, out, batch_seconds=3.0, progress=False)
    assert again["n"] == full["n"] == 4 and len(calls) == 1
    assert np.array_equal(np.load(os.path.join(out, "embeddings.npy")), ref)
    with pytest.raises(embed.EmbedError, match=r"other options \(normalize: False then, True now\)"):
        embed.embed_items(_fn(model), items, out, normalize=True, progress=False)


def test_refusals_are_one_line(model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "speechbrain_ssrl.embed", "--model", str(model), "--audio", str(empty),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"embed stopped: --audio={empty}: no audio file in it")
    for args, expected in (
        (["--audio", str(tmp_path / "nothing.csv")], "does not exist. Fix:"),
        (["--audio", str(empty), "--batch_size", "0"], "--batch_size=0: pass a number >= 1"),
    ):
        with pytest.raises(SystemExit) as e:
            embed.main(["--model", str(model), "--out", str(tmp_path / "o"), *args])
        assert str(e.value).startswith("embed stopped: ") and expected in str(e.value) and "\n" not in str(e.value)
