"""Issue 16: bad audio files are found once, named and listed; evaluation never scores wrong audio silently.

Real files: a float wav with NaN samples, a header-only wav, a text file in the CSV, 8 kHz and stereo
44.1 kHz test files, a symbolic link loop, a non-UTF-8 trial list.
"""

import csv
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ssrl.data import views
from speechbrain_ssrl.data.trials import TrialListError
from speechbrain_ssrl.data.voxceleb import check_audio, find_wavs, prepare_voxceleb, read_trial_list
from speechbrain_ssrl.embeddings import BadAudioError, extract_embeddings, extract_readable_embeddings, read_audio_file

torch.set_num_threads(1)
SR = 16000


def tone(seconds=1.5, rate=SR, freq=220.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_nan_float_wav(path, seconds=1.5):
    x = tone(seconds)
    x[len(x) // 2] = np.nan
    sf.write(str(path), x, SR, subtype="FLOAT")
    return str(path)


def write_header_only_wav(path):
    sf.write(str(path), np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    return str(path)


def write_csv(path, wavs):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for i, p in enumerate(wavs):
            w.writerow([f"u{i}", "1.5", p, 0, int(1.5 * SR), f"s{i % 2}"])
    return str(path)


@pytest.fixture()
def training_csv(tmp_path):
    """6 good rows; row 2 a NaN float wav, row 4 a text file (as ``skip_prep`` would let in)."""
    wavs = []
    for i in range(6):
        p = tmp_path / f"good{i}.wav"
        sf.write(str(p), tone(freq=200 + 40 * i), SR, subtype="PCM_16")
        wavs.append(str(p))
    wavs[2] = write_nan_float_wav(tmp_path / "nan.wav")
    text = tmp_path / "passwd.wav"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    wavs[4] = str(text)
    return write_csv(tmp_path / "train.csv", wavs), wavs


def skipped(csv_path):
    path = os.path.join(os.path.dirname(csv_path), "skipped_files.txt")
    return [line.split("\t")[0] for line in open(path)] if os.path.exists(path) else []


def test_preparation_decodes_float_files_and_rejects_nan(tmp_path):
    info, why = check_audio(write_nan_float_wav(tmp_path / "nan.wav"))
    assert info is None and "non-finite samples" in why
    sf.write(str(tmp_path / "ok.wav"), tone(), SR, subtype="FLOAT")
    assert check_audio(str(tmp_path / "ok.wav"))[0] is not None
    info, why = check_audio(write_header_only_wav(tmp_path / "empty.wav"))
    assert info is None and "no audio samples" in why


def test_preparation_leaves_a_nan_float_wav_out_and_lists_it(minivox_ci, tmp_path):
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(minivox_ci, data)
    test_spk = {line.split()[1].split("/")[0] for line in open(os.path.join(data, "veri_test2.txt"))}
    spk = next(s for s in sorted(os.listdir(os.path.join(data, "wav"))) if s not in test_spk)
    video = sorted(os.listdir(os.path.join(data, "wav", spk)))[0]
    nan_wav = write_nan_float_wav(os.path.join(data, "wav", spk, video, "99999.wav"))
    save = str(tmp_path / "save")
    prepare_voxceleb(data, save, os.path.join(data, "veri_test2.txt"))
    listed = open(os.path.join(save, "skipped_files.txt")).read()
    assert f"{nan_wav}\tnon-finite samples (NaN or inf), the first at sample" in listed
    assert nan_wav not in open(os.path.join(save, "train.csv")).read()


def test_every_reader_of_training_audio_skips_a_bad_file_once(training_csv, monkeypatch, caplog):
    csv_path, wavs = training_csv
    rows = views.read_csv_rows(csv_path)
    reads = []
    real_read = views.sf.read
    monkeypatch.setattr(views.sf, "read", lambda path, *a, **k: reads.append(path) or real_read(path, *a, **k))
    monkeypatch.setattr(views, "_BAD_FILE_LISTS", {})
    sampler = views.CropSampler(seed=1)
    ds = views.student_teacher_dataset(csv_path, sampler, student_seconds=0.5, teacher_seconds=1.0)
    with caplog.at_level("WARNING"):
        items = [ds[i] for i in range(6)] + [ds[i] for i in range(6)]  # two epochs
        batches = list(views.clean_crop_batches(rows, 4, 6, 1.0, bad_files=views.bad_file_list(csv_path)))
    assert [it["index"] for it in items[:6]] == [0, 1, 3, 3, 5, 5]
    assert all(torch.isfinite(b).all() for b in batches)
    assert sorted(skipped(csv_path)) == sorted([wavs[2], wavs[4]])  # listed once each
    assert reads.count(wavs[2]) == 1 and reads.count(wavs[4]) == 1  # decoded once, then skipped unread
    assert caplog.text.count(f"unusable training file {wavs[2]}") == 1
    # another process (a DataLoader worker, a resumed run) knows them from skipped_files.txt without decoding
    monkeypatch.setattr(views, "_BAD_FILE_LISTS", {})
    reads.clear()
    _ = [ds[i] for i in range(6)]
    assert wavs[2] not in reads and wavs[4] not in reads


def test_initial_clustering_embeddings_skip_bad_training_files(training_csv, tmp_path, monkeypatch):
    from speechbrain_ssrl.initial_clustering import initial_clustering

    csv_path, wavs = training_csv
    monkeypatch.setattr(views, "_BAD_FILE_LISTS", {})

    def embed(x, lens):
        assert torch.isfinite(x).all()
        return torch.stack([x.abs().mean(1), x.std(1), x[:, :100].mean(1)], 1)

    out = initial_clustering(embed, csv_path, str(tmp_path / "clu"), 2, progress=False)
    assert out["labels"].shape == (6,)
    assert out["labels"][2] == out["labels"][3]  # row 2 embeds row 3, the row the training loader uses instead
    assert sorted(skipped(csv_path)) == sorted([wavs[2], wavs[4]])


def test_asnorm_cohort_leaves_out_bad_rows_of_the_training_csv(training_csv, monkeypatch):
    from speechbrain_ssrl.evaluation import _cohort_embeddings

    csv_path, wavs = training_csv
    monkeypatch.setattr(views, "_BAD_FILE_LISTS", {})
    emb = _cohort_embeddings(
        lambda x, lens: torch.stack([x.mean(1), x.std(1)], 1), wavs, csv_path, None, 0, [], 10, progress=False
    )
    assert emb.shape == (4, 2) and torch.isfinite(emb).all()
    assert sorted(skipped(csv_path)) == sorted([wavs[2], wavs[4]])


def test_test_files_are_resampled_and_downmixed_with_a_warning_or_refused(tmp_path, caplog):
    ref = tone(2.0, SR, 300.0)
    sf.write(str(tmp_path / "ref.wav"), ref, SR)
    sf.write(str(tmp_path / "low.wav"), tone(2.0, 8000, 300.0), 8000)
    sf.write(str(tmp_path / "stereo.wav"), tone(2.0, 44100, 300.0, channels=2), 44100)
    wav, notes = read_audio_file(str(tmp_path / "stereo.wav"))
    assert wav.shape[0] == 2 * SR and any("44100 Hz" in n for n in notes) and any("2 channels" in n for n in notes)
    # the resampled tone is the 16 kHz tone (the old reader took 44.1 kHz samples as 16 kHz ones)
    assert torch.allclose(wav[1000:-1000], torch.from_numpy(ref)[1000:-1000], atol=2e-3)
    wav8, _ = read_audio_file(str(tmp_path / "low.wav"))
    assert wav8.shape[0] == 2 * SR and torch.allclose(wav8[1000:-1000], torch.from_numpy(ref)[1000:-1000], atol=5e-3)

    def fn(x, lens):
        return torch.stack([x.std(1), (x[:, 1:] * x[:, :-1]).mean(1)], 1)  # the second depends on the rate

    paths = [str(tmp_path / n) for n in ("ref.wav", "low.wav", "stereo.wav")]
    with caplog.at_level("WARNING"):
        emb = extract_embeddings(fn, paths, progress=False)
    assert torch.allclose(emb[0], emb[1], atol=1e-2) and torch.allclose(emb[0], emb[2], atol=1e-2)
    assert "low.wav: resampled from 8000 Hz" in caplog.text and "stereo.wav: 2 channels averaged" in caplog.text
    with pytest.raises(BadAudioError, match=r"low\.wav: 8000 Hz, 1 channel\(s\), not 16000 Hz mono"):
        extract_embeddings(fn, paths, progress=False, convert_audio=False)


def test_header_only_and_nan_test_files_are_refused_naming_the_file(tmp_path):
    fn = lambda x, lens: torch.stack([x.std(1), x.mean(1)], 1)  # noqa: E731
    good = str(tmp_path / "good.wav")
    sf.write(good, tone(), SR)
    with pytest.raises(BadAudioError, match=r"empty\.wav: no audio samples \(a header only"):
        extract_embeddings(fn, [good, write_header_only_wav(tmp_path / "empty.wav")], progress=False)
    with pytest.raises(BadAudioError, match=r"nan\.wav: non-finite samples"):
        extract_embeddings(fn, [good, write_nan_float_wav(tmp_path / "nan.wav")], progress=False)
    emb, kept, bad = extract_readable_embeddings(fn, [good, str(tmp_path / "nan.wav")], progress=False)
    assert kept == [0] and "nan.wav" in next(iter(bad))


def test_long_files_are_cut_to_max_seconds_with_a_warning(tmp_path, caplog):
    sf.write(str(tmp_path / "long.wav"), tone(5.0), SR)
    seen = []
    with caplog.at_level("WARNING"):
        extract_embeddings(lambda x, lens: seen.append(x.shape[1]) or x[:, :2], [str(tmp_path / "long.wav")],
                           max_seconds=2.0, progress=False)
    assert seen == [2 * SR] and "cut to its first 2 s of 5.0 s" in caplog.text


def test_symlink_loop_in_the_corpus_is_skipped_and_listed(tmp_path):
    spk = tmp_path / "wav" / "id1" / "v1"
    spk.mkdir(parents=True)
    sf.write(str(spk / "a.wav"), tone(), SR)
    os.symlink(str(spk / "loop.wav"), str(spk / "loop.wav"))  # a link to itself
    os.symlink(str(tmp_path / "wav" / "id2"), str(tmp_path / "wav" / "id2"))
    found = []
    files = find_wavs(str(tmp_path), skipped=found)
    assert [rel for rel, _ in files] == ["id1/v1/a.wav"]
    assert sorted(os.path.basename(p) for p, _ in found) == ["id2", "loop.wav"]
    assert all("symbolic link loop" in why for _, why in found)


def test_non_utf8_trial_list_and_missing_data_folder_are_named(tmp_path):
    bad = tmp_path / "trials.txt"
    bad.write_bytes(b"1 id1/a/1.wav id1/b/2.wav\n\xff\xfe garbage\n")
    with pytest.raises(TrialListError, match="trials.txt is not UTF-8 text"):
        read_trial_list(str(bad))
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"data folder {missing} does not exist"):
        prepare_voxceleb(str(missing), str(tmp_path / "save"), str(missing / "veri_test2.txt"))
