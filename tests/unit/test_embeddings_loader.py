"""Embedding extraction through a DataLoader (worker processes) and sharded over DDP ranks: the same
embeddings, in the same order, as one process reading file by file; bad files handled as before."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch
from ddp_utils import free_port, init_gloo

from speechbrain_ssrl.data.views import BadAudioError
from speechbrain_ssrl.embeddings import _batches, extract_embeddings, extract_readable_embeddings, read_audio_file

torch.set_num_threads(1)
SR = 16000


def _corpus(folder, n=11, bad=None):
    """``n`` wavs of 0.2-1.9 s (CSV rows with header durations); ``bad``: indices written as text files."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, rows = [], ["ID,duration,wav,start,stop,spk_id"]
    for i in range(n):
        p = os.path.join(folder, f"u{i:02d}.wav")
        m = int(SR * (0.2 + 1.7 * rng.random()))
        if bad is not None and i in bad:
            with open(p, "w") as f:
                f.write("not audio\n")
        else:
            sf.write(p, (0.1 * rng.standard_normal(m)).astype(np.float32), SR)
        paths.append(p)
        rows.append(f"u{i:02d},{m / SR},{p},0,{m},spk{i % 3}")
    csv = os.path.join(folder, "train.csv")
    with open(csv, "w") as f:
        f.write("\n".join(rows) + "\n")
    return paths, csv


def _embed_fn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(1, 6, 64, stride=32), torch.nn.BatchNorm1d(6), torch.nn.ReLU()).eval()

    @torch.no_grad()
    def fn(x, lens):
        h = net(x.unsqueeze(1))
        f = h.shape[-1]
        valid = (torch.arange(f)[None] < (lens * f).ceil()[:, None]).float()
        pooled = (h * valid[:, None]).sum(-1) / valid.sum(-1, keepdim=True)
        # depends on the padded length too: only the same batches give the same numbers
        return torch.cat([pooled, x.shape[1] / 1e5 + lens[:, None]], 1)

    return fn


def _reference(embed_fn, paths, durations, max_seconds=None, batch_seconds=3.0, max_batch=4):
    """The former loop: batches by length, files read one by one in this process, padded, embedded."""
    out = [None] * len(paths)
    for b in _batches(durations, max_seconds, batch_seconds, max_batch):
        wavs = [read_audio_file(paths[i], max_seconds, SR)[0] for i in b]
        T = max(w.shape[0] for w in wavs)
        x = torch.zeros(len(wavs), T)
        for j, w in enumerate(wavs):
            x[j, : w.shape[0]] = w
        lens = torch.tensor([w.shape[0] / T for w in wavs])
        e = torch.nn.functional.normalize(embed_fn(x, lens).float().reshape(len(b), -1), dim=-1)
        for j, i in enumerate(b):
            out[i] = e[j]
    return torch.stack(out)


def _durations(paths):
    return [sf.info(p).duration for p in paths]


@pytest.mark.parametrize("max_seconds", [None, 0.7])
def test_workers_give_the_same_embeddings_in_the_same_order(tmp_path, max_seconds):
    paths, _ = _corpus(str(tmp_path / "c"))
    fn = _embed_fn()
    ref = _reference(fn, paths, _durations(paths), max_seconds)
    kw = dict(max_seconds=max_seconds, batch_seconds=3.0, max_batch=4, progress=False, pad=True)
    rng_before = torch.get_rng_state()
    one = extract_embeddings(fn, paths, num_workers=0, **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the loader's seed draw uses its own generator
    two = extract_embeddings(fn, paths, num_workers=2, **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(one, ref) and torch.equal(two, ref)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_default_batches_give_each_file_its_embedding_alone(tmp_path, num_workers):
    """Without padding (the default) a file's embedding is that of the file alone, whatever shares its batch;
    files of equal length still share one forward pass; padded batches change the shorter files."""
    paths, _ = _corpus(str(tmp_path / "c"), n=7)
    rng = np.random.default_rng(5)
    for k in range(3):  # three files of one length: one batch, one pass
        p = str(tmp_path / "c" / f"same{k}.wav")
        sf.write(p, (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
        paths.append(p)
    fn = _embed_fn()
    calls = []
    counting = lambda x, lens: calls.append((x.shape[0], bool((lens == 1).all()))) or fn(x, lens)  # noqa: E731
    got = extract_embeddings(counting, paths, batch_seconds=30.0, max_batch=16, progress=False, num_workers=num_workers)
    for i, p in enumerate(paths):
        alone = read_audio_file(p, None, SR)[0][None]
        ref = torch.nn.functional.normalize(fn(alone, torch.ones(1)).float(), dim=-1)[0]
        assert torch.allclose(got[i], ref, atol=1e-6), p  # equal up to float rounding of a batched pass
    assert all(full for _, full in calls) and (3, True) in calls and len(calls) == 8  # 7 lengths + the 3 equal files
    padded = extract_embeddings(fn, paths, batch_seconds=30.0, max_batch=16, progress=False, pad=True)
    assert not torch.allclose(padded, got)


def test_equal_header_durations_with_different_decoded_lengths_are_not_padded():
    from speechbrain_ssrl.embeddings import _equal_length_groups, length_batches

    assert length_batches([2.0, 3.0, 2.0, 2.0, 1.0], budget=100, max_batch=8, pad=False) == [[1], [0, 2, 3], [4]]
    assert length_batches([2.0, 3.0, 2.0, 2.0, 1.0], budget=100, max_batch=8, pad=True) == [[1, 0, 2, 3, 4]]
    assert length_batches([2.0, 2.0, 2.0], budget=4.0, max_batch=8, pad=False) == [[0, 1], [2]]
    assert _equal_length_groups([32000, 31999, 32000]) == [[0, 2], [1]]


def test_workers_convert_and_refuse_like_one_process(tmp_path, caplog):
    paths, _ = _corpus(str(tmp_path / "c"), n=6)
    rng = np.random.default_rng(1)
    stereo = str(tmp_path / "c" / "stereo8k.wav")
    sf.write(stereo, (0.1 * rng.standard_normal((9000, 2))).astype(np.float32), 8000)
    broken = str(tmp_path / "c" / "broken.wav")
    with open(broken, "w") as f:
        f.write("text")
    fn = _embed_fn()
    kw = dict(batch_seconds=3.0, max_batch=4, progress=False, pad=True)
    with caplog.at_level("WARNING"):
        a = extract_embeddings(fn, paths + [stereo], num_workers=2, **kw)
    assert "stereo8k.wav: 2 channels averaged to mono, resampled from 8000 Hz" in caplog.text  # notes from a worker
    assert torch.equal(a, extract_embeddings(fn, paths + [stereo], num_workers=0, **kw))
    with pytest.raises(BadAudioError, match="stereo8k.wav"):
        extract_embeddings(fn, paths + [stereo], num_workers=2, convert_audio=False, **kw)
    # a file that is not audio: refused (named), or left out by extract_readable_embeddings
    header_only = str(tmp_path / "c" / "header_only.wav")
    sf.write(header_only, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(BadAudioError, match="header_only.wav"):
        extract_embeddings(fn, paths + [header_only], durations=_durations(paths) + [1.0], num_workers=2, **kw)
    for w in (0, 2):
        emb, kept, bad = extract_readable_embeddings(fn, paths + [broken, header_only], num_workers=w, **kw)
        assert kept == list(range(len(paths))) and set(bad) == {broken, header_only}
        assert torch.equal(emb, _reference(fn, paths, _durations(paths)))


def test_training_reads_with_workers_skip_bad_files_once(tmp_path):
    from speechbrain_ssrl.initial_clustering import embed_training_set

    _, csv = _corpus(str(tmp_path / "c"), bad={3, 7})
    fn = _embed_fn()
    ids0, e0 = embed_training_set(fn, csv, progress=False, batch_seconds=3.0, max_batch=4)
    listed = open(tmp_path / "c" / "skipped_files.txt").read().splitlines()
    ids2, e2 = embed_training_set(fn, csv, progress=False, batch_seconds=3.0, max_batch=4, num_workers=2)
    assert ids0 == ids2 and torch.equal(e0, e2)
    assert sorted(line.split("\t")[0].rsplit("/", 1)[1] for line in listed) == ["u03.wav", "u07.wav"]
    assert open(tmp_path / "c" / "skipped_files.txt").read().splitlines() == listed  # not decoded again


# ------------------------------------------------------------------------------------------- 2 gloo ranks
def _ddp_worker(rank, world, port, folder, out):
    init_gloo(rank, world, port)
    try:
        from speechbrain_ssrl.initial_clustering import initial_clustering

        paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("u"))
        fn = _embed_fn()
        kw = dict(batch_seconds=3.0, max_batch=4, progress=False)
        kwp = dict(kw, pad=True)  # the padded batches of the initial clustering
        single = extract_embeddings(fn, paths, **kwp)  # distributed=False: this rank alone, no collective
        calls = []
        sharded = extract_embeddings(lambda x, lens: calls.append(x.shape[0]) or fn(x, lens), paths, distributed=True,
                                     num_workers=1, **kwp)
        emb, kept, bad = extract_readable_embeddings(fn, paths + [os.path.join(folder, "broken.txt")],
                                                     distributed=True, **kwp)
        res = initial_clustering(fn, os.path.join(folder, "train.csv"), os.path.join(out, "clu"), 3, seed=0,
                                 distributed=True, num_workers=1, **kw)
        # a file that fails on one rank only: every rank raises (no rank left waiting in a collective)
        order = [b for b in _batches(_durations(paths), None, 3.0, 4)]
        victim = paths[order[1][0]]  # in rank 1's shard
        err = None
        try:
            extract_embeddings(fn, paths, distributed=True, read_fn=_failing_reader(paths, victim), **kwp)
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {e}"
        torch.save(dict(single=single, sharded=sharded, calls=calls, emb=emb, kept=kept, bad=bad, labels=res["labels"],
                        centroids=res["centroids"], err=err), os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _failing_reader(paths, victim):
    def read(i, ms):
        if paths[i] == victim:
            raise BadAudioError(victim, "broken on purpose")
        return read_audio_file(paths[i], ms, SR)[0]

    return read


def test_sharded_over_two_gloo_ranks_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    from speechbrain_ssrl.initial_clustering import initial_clustering

    folder = str(tmp_path / "c")
    paths, csv = _corpus(folder, n=13)
    with open(os.path.join(folder, "broken.txt"), "w") as f:
        f.write("no audio")
    mp.spawn(_ddp_worker, args=(2, free_port(), folder, str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in (0, 1)]
    fn = _embed_fn()
    ref = _reference(fn, paths, _durations(paths))
    one = initial_clustering(fn, csv, str(tmp_path / "single"), 3, seed=0, progress=False, batch_seconds=3.0, max_batch=4)
    for k in (0, 1):
        assert torch.equal(r[k]["sharded"], r[k]["single"]), k  # sharded + gathered == this rank alone
        assert torch.allclose(r[k]["sharded"], ref, atol=1e-6), k
        assert r[k]["kept"] == list(range(13)) and list(r[k]["bad"]) == [os.path.join(folder, "broken.txt")]
        assert torch.equal(r[k]["emb"], r[k]["single"])
        assert torch.equal(r[k]["labels"], one["labels"]) and torch.allclose(r[k]["centroids"], one["centroids"], atol=1e-6)
    n_batches = len(_batches(_durations(paths), None, 3.0, 4))
    assert len(r[0]["calls"]) == (n_batches + 1) // 2 and len(r[1]["calls"]) == n_batches // 2  # each its share
    assert sum(r[0]["calls"]) + sum(r[1]["calls"]) == 13 and n_batches >= 3
    assert r[1]["err"].startswith("BadAudioError") and "broken on purpose" in r[1]["err"]
    assert r[0]["err"].startswith("RuntimeError") and "rank 1" in r[0]["err"] and "broken on purpose" in r[0]["err"]
