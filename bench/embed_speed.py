"""CPU benchmark of the initial clustering's embedding extraction (files/s): the training CSV's files read
with the checked reads (views.read_with_fallback) and embedded by a small ECAPA (C=128, 192-d, Fbank 80 + sentence
mean normalisation: the MiniVox recipe's model when the figures below were measured; it is C=64 now), with 0 or more
DataLoader workers.

    python bench/embed_speed.py --train_csv results/.../train.csv --workers 0 2 [--limit 600] [--max_seconds 8]

``--model none`` replaces the ECAPA by a mean/std of the waveform: what is left is the reading (what the
workers take off the main process; on a GPU the model is fast and the reading is what limits).

Prints one JSON line per setting. The embeddings of every setting are compared with the first (equal).

Measured (#14, MiniVox demo train.csv, 2,320 files, 1 torch thread, cap 8 s, on the 2-core CPU while
training runs used it too: load average 6-9, so the figures are rough):
    ECAPA          before (files read one by one in the main process) 17.5 files/s; now, 0 workers 18.9,
                   2 workers 20.8 (embeddings equal)
    --model none   before 270 files/s; now, 0 workers 298, 2 workers 214 (cached small files: handing padded
                   batches between processes costs more than reading them, on 2 busy cores)
"""

import argparse
import json
import os
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train_csv", required=True, help="a prepared train.csv (its folder gets skipped_files.txt)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--limit", type=int, default=0, help="first N rows only (0: all)")
    ap.add_argument("--max_seconds", type=float, default=8.0, help="cap per utterance (the recipe's cluster_max_seconds)")
    ap.add_argument("--model", choices=["ecapa", "none"], default="ecapa")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the embedding process")
    ap.add_argument("--out_csv", default=None, help="where the --limit subset is written (default: next to train_csv)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    from speechbrain_ssrl.initial_clustering import embed_training_set

    csv = a.train_csv
    if a.limit:
        with open(csv) as f:
            lines = f.readlines()[: a.limit + 1]
        csv = a.out_csv or os.path.join(os.path.dirname(os.path.abspath(csv)), f"train_first{a.limit}.csv")
        with open(csv, "w") as f:
            f.writelines(lines)
    torch.manual_seed(0)
    fbank, norm = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)
    model = ECAPA_TDNN(80, channels=[128, 128, 128, 128, 384], attention_channels=128, lin_neurons=192).eval()

    @torch.no_grad()
    def embed(wavs, lens):
        if a.model == "none":
            return torch.stack([wavs.mean(1), wavs.std(1), lens], 1)
        return model(norm(fbank(wavs), lens), lens).reshape(wavs.shape[0], -1)

    ref = None
    for w in a.workers:
        kw = {} if w == 0 else {"num_workers": w}  # (0 also runs on code that has no num_workers)
        t0 = time.perf_counter()
        ids, emb = embed_training_set(embed, csv, max_seconds=a.max_seconds, progress=False, **kw)
        dt = time.perf_counter() - t0
        same = None if ref is None else bool(torch.equal(ref, emb))
        ref = emb if ref is None else ref
        print(json.dumps({"workers": w, "files": len(ids), "seconds": round(dt, 2), "files_per_s": round(len(ids) / dt, 2),
                          "threads": a.threads, "model": a.model, "max_seconds": a.max_seconds, "equal_to_first": same}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
