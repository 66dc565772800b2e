"""Reliability of the recipe on a CI-size MiniVox: SIGKILLed runs resume exactly, faults are survived,
bad input is refused before any work.

The runs are subprocesses of ``fault_injection.py`` (train.py with a SIGKILL or NaN injected at an exact
batch / save). The SSRL stage starts from a random tiny ECAPA standing in for the DINO teacher (a DINO
run costs time and adds nothing here); the student is not augmented (``student_aug_prob=0``: the noise
augmentation reads its own DataLoader whose position is not checkpointed).
"""

import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from recipe_utils import RECIPE, assert_same, history

HERE = os.path.dirname(os.path.abspath(__file__))
WRAPPER = os.path.join(HERE, "fault_injection.py")
SSRL_YAML = "hparams/minivox/ssrl_ecapa.yaml"
TINY = ["--channels=[32,32,32,32,96]", "--emb_dim=16", "--attention_channels=16", "--batch_size=8"]
# 48 training utterances -> 6 batches an epoch; epoch 1 fixed labels, epoch 2 label update + pruning;
# intra-epoch checkpoints every 2 batches; no validation / BN re-estimation (time)
SSRL_ARGS = TINY + [
    "--K0=12", "--fixed_label_epochs=1", "--number_of_epochs=2", "--queue_length=3", "--student_aug_prob=0",
    "--lr_fix_start=0.01", "--lr_start=0.01", "--ema_start=0.5", "--ema_end=0.9",
    "--bn_recal_batches=0", "--validate_every=0", "--valid_trials=none", "--ckpt_interval_steps=2",
    # the yaml's neighbourhood vote (recorded teacher embeddings, relabelled at the epoch end), made to move labels
    # on 48 utterances: the own label weighs one neighbour instead of 3.5
    "--relabel_assignment=knn", "--relabel_knn_self_weight=1.0",
]


def run(out, data, teacher, *extra, faults=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("FAULT_KILL_AT", "FAULT_KILL_IN_SAVE", "FAULT_NAN_AT"):
        env.pop(k, None)
    env.update(faults or {})
    args = {a.split("=", 1)[0]: a for a in SSRL_ARGS}
    args.update({a.split("=", 1)[0]: a for a in extra})  # a key given in ``extra`` replaces the default
    cmd = [sys.executable, WRAPPER, "train.py", SSRL_YAML, f"--data_folder={data}", f"--dino_folder={teacher}",
           f"--output_folder={out}", *args.values(), "--noprogressbar"]
    proc = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=timeout)
    proc.log = proc.stdout + proc.stderr
    return proc


def ok(proc):
    assert proc.returncode == 0, proc.log[-6000:]
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random tiny ECAPA as the stage-1 teacher (``<folder>/embedding_model.ckpt``)."""
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = ECAPA_TDNN(input_size=80, channels=[32, 32, 32, 32, 96], lin_neurons=16, attention_channels=16)
    torch.save(model.state_dict(), folder / "embedding_model.ckpt")
    return str(folder)


@pytest.fixture(scope="module")
def reference(minivox_ci, teacher, tmp_path_factory):
    """The uninterrupted run."""
    out = str(tmp_path_factory.mktemp("reference") / "ssrl")
    ok(run(out, minivox_ci, teacher))
    return out


def checkpoints(out):
    """(meta, folder) of the complete checkpoints of a run, oldest first."""
    found = []
    for d in glob.glob(os.path.join(out, "save", "CKPT+*")):
        with open(os.path.join(d, "CKPT.yaml")) as f:
            found.append((yaml.safe_load(f), d))
    return sorted(found, key=lambda x: x[0]["unixtime"])


def load(folder, name):
    return torch.load(os.path.join(folder, f"{name}.ckpt"), map_location="cpu", weights_only=True)


def brain_state(folder):
    with open(os.path.join(folder, "brain.ckpt")) as f:
        return yaml.safe_load(f)


def test_sigkill_mid_save_and_mid_epoch_then_resume_equals_uninterrupted(minivox_ci, teacher, reference, tmp_path):
    out = str(tmp_path / "ssrl")
    # 1. SIGKILL in the middle of the 6th save (epoch 2, after batch 4), 3 files written
    p1 = run(out, minivox_ci, teacher, faults={"FAULT_KILL_IN_SAVE": "6"})
    assert p1.returncode == -9, p1.log[-3000:]
    save = os.path.join(out, "save")
    assert glob.glob(os.path.join(save, ".saving+CKPT+*")), "the interrupted save should be a hidden folder"
    meta, last = checkpoints(out)[-1]  # the checkpoint a resume picks is complete and loadable
    assert meta["end-of-epoch"] is False and brain_state(last)["step"] == 2
    for f in glob.glob(os.path.join(last, "*.ckpt")):
        if not f.endswith(("brain.ckpt", "counter.ckpt", "dataloader-TRAIN.ckpt")):
            load(last, os.path.basename(f)[:-5])

    # 2. the same command resumes at batch 3 of epoch 2; SIGKILL in batch 5 (after the batch-4 checkpoint),
    #    once its forward pass and pseudo-label records are done
    p2 = run(out, minivox_ci, teacher, faults={"FAULT_KILL_AT": "2:5"})
    assert p2.returncode == -9, p2.log[-3000:]
    assert "Going into epoch 1" not in p2.log and "Loading a checkpoint" in p2.log
    assert not glob.glob(os.path.join(save, ".saving+*")), "stale temp folders are removed at start"
    meta, last = checkpoints(out)[-1]
    assert meta["end-of-epoch"] is False and brain_state(last)["step"] == 4 and brain_state(last)["optimizer_step"] == 10
    assert load(last, "pseudo_labels")["rec_idx"].numel() == 4 * 8  # batches 1-4 of epoch 2, not the killed 5th

    # 3. the same command finishes the run
    p3 = ok(run(out, minivox_ci, teacher))
    assert "Going into epoch 1" not in p3.log and "Loading a checkpoint" in p3.log

    (_, a), (_, b) = checkpoints(reference)[-1], checkpoints(out)[-1]
    assert_same(load(a, "pseudo_labels"), load(b, "pseudo_labels"), "pseudo_labels", rtol=1e-5, atol=1e-6)
    ref_labels = load(a, "pseudo_labels")
    assert torch.equal(ref_labels["labels"], load(b, "pseudo_labels")["labels"])
    assert torch.equal(ref_labels["queue"]["queues"], load(b, "pseudo_labels")["queue"]["queues"])
    assert not torch.equal(ref_labels["labels"], ref_labels["y0"])  # the labels did move (a meaningful check)
    for name in ("teacher_model", "teacher_classifier", "embedding_model", "classifier"):
        assert_same(load(a, name), load(b, name), name, rtol=1e-5, atol=1e-6)
    assert brain_state(a)["optimizer_step"] == brain_state(b)["optimizer_step"] == 12
    ra, rb = history(reference), history(out)
    assert [r["epoch"] for r in rb] == ["0", "1", "2"]
    for x, y in zip(ra, rb):
        for k in x:
            if k != "epoch_seconds":
                assert x[k] == y[k] or float(x[k]) == pytest.approx(float(y[k]), rel=1e-5), (k, x[k], y[k])


def test_nonfinite_losses_are_skipped_then_stop_the_run(minivox_ci, teacher, tmp_path):
    out = str(tmp_path / "nan")
    proc = run(out, minivox_ci, teacher, "--max_nonfinite_in_a_row=3", faults={"FAULT_NAN_AT": "1:2,2:1,2:2,2:3"})
    assert proc.returncode == 1, proc.log[-3000:]
    assert "non-finite loss (nan) at epoch 1, batch 2: step skipped" in proc.log
    assert "training stopped: 3 non-finite losses in a row (max_nonfinite_in_a_row=3) at epoch 2, batch 3" in proc.log
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["0", "1"]  # epoch 1 finished despite one bad batch
    assert int(rows[1]["steps"]) == 5  # 6 batches, one skipped: no optimiser step ...
    assert int(rows[1]["n_relabelled"]) == 40  # ... and no pseudo-label records for it
    ends = [m for m, _ in checkpoints(out) if m["end-of-epoch"]]  # epoch 1's checkpoint is kept for a resume
    assert [m["epoch"] for m in ends] == [1.0]


def test_refusals_before_any_work(minivox_ci, teacher, reference, tmp_path):
    # an unknown key on the command line: nothing is created
    out = str(tmp_path / "unknown")
    proc = run(out, minivox_ci, teacher, "--K_0=3")
    assert proc.returncode == 1 and "--K_0 is not a key of" in proc.log and "Did you mean 'K0'?" in proc.log
    assert "Traceback" not in proc.log and not os.path.exists(out)

    # K0 larger than the number of training utterances
    proc = run(str(tmp_path / "k0"), minivox_ci, teacher, "--K0=49")
    assert proc.returncode == 1 and "K0=49 is larger than the number of training utterances N=48" in proc.log
    assert not os.path.exists(str(tmp_path / "k0" / "initial_clustering"))

    # resuming with another K0 / architecture: refused before the experiment folder is touched
    resumed = str(tmp_path / "resume")
    shutil.copytree(reference, resumed)
    before = open(os.path.join(resumed, "hyperparams.yaml")).read()
    proc = run(resumed, minivox_ci, teacher, "--K0=10", "--emb_dim=24")
    assert proc.returncode == 1, proc.log[-3000:]
    assert "K0: 12 in the checkpoint, 10 now" in proc.log and "emb_dim: 16 in the checkpoint, 24 now" in proc.log
    assert "--output_folder" in proc.log and "Traceback" not in proc.log
    assert open(os.path.join(resumed, "hyperparams.yaml")).read() == before

    # resuming on another data folder (one training speaker fewer)
    other = str(tmp_path / "other_data")
    shutil.copytree(minivox_ci, other)
    spk = sorted(os.listdir(os.path.join(other, "wav")))
    test_spk = {line.split()[1].split("/")[0] for line in open(os.path.join(other, "veri_test2.txt"))}
    shutil.rmtree(os.path.join(other, "wav", next(s for s in spk if s not in test_spk)))
    before = snapshot(resumed)
    proc = run(resumed, other, teacher)
    assert proc.returncode == 1, proc.log[-3000:]
    assert "training CSV does not match the one the checkpoint was trained on (N=48 in the checkpoint" in proc.log
    assert "Going into epoch" not in proc.log and "Traceback" not in proc.log
    assert snapshot(resumed) == before  # hyperparams.yaml, save/*.csv, logs: the refused run wrote nothing


def snapshot(folder):
    """{relative path: (size, mtime_ns, bytes)} of every file under ``folder``."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns, open(p, "rb").read())
    return out


def one_line_refusal(proc, *fragments):
    assert proc.returncode == 1, proc.log[-3000:]
    assert "Traceback" not in proc.log, proc.log[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "refused to start" in line or "stopped" in line, line
    for f in fragments:
        assert f in line, line
    return line


def test_degenerate_settings_are_refused_before_any_work(minivox_ci, teacher, tmp_path):
    # (every case in-process: tests/unit/test_recipe_checks.py)
    cases = [
        (["--number_of_epochs=0"], "--number_of_epochs=0: nothing would be trained"),
        (["--K0=-3"], "--K0=-3: pseudo labels need at least 2 clusters"),  # hyperpyyaml: "negative dimension"
    ]
    for i, (args, text) in enumerate(cases):
        out = str(tmp_path / f"run{i}")
        one_line_refusal(run(out, minivox_ci, teacher, *args), text)
        assert not os.path.exists(out), args
    # a data folder that does not exist is named as such (not as a missing trial list); nothing is left behind
    out = str(tmp_path / "no_data")
    one_line_refusal(run(out, str(tmp_path / "nowhere"), teacher), f"data folder {tmp_path / 'nowhere'} does not exist")
    assert not os.path.exists(out) and not [d for d in os.listdir(tmp_path) if d.startswith(".")]
    # batch_size > N is known once the data is prepared: still nothing in the output folder
    out = str(tmp_path / "big_batch")
    one_line_refusal(run(out, minivox_ci, teacher, "--batch_size=49"), "--batch_size=49 is larger than the 48 training utterances")
    assert not os.path.exists(out)


def test_untrained_dino_export_is_the_random_init_yardstick_and_refused_as_a_teacher(minivox_ci, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    dino = str(tmp_path / "random_init")
    args = ["--channels=[32,32,32,32,96]", "--emb_dim=16", "--attention_channels=16", "--n_prototypes=64",
            "--head_hidden=32", "--head_bottleneck=16", "--bn_recal_batches=1", "--bn_recal_batch_size=4"]
    cmd = [sys.executable, "train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}",
           f"--output_folder={dino}", *args, "--noprogressbar"]
    p = subprocess.run(cmd + ["--number_of_epochs=0"], cwd=RECIPE, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "--export_untrained=True" in p.stderr.strip().splitlines()[-1], p.stderr[-2000:]
    p = subprocess.run(cmd + ["--number_of_epochs=0", "--export_untrained=True"], cwd=RECIPE, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    info = yaml.safe_load(open(os.path.join(dino, "pretrained", "export_info.json")))
    assert info["training"] == {"stage": "dino", "untrained": True, "epochs_trained": 0}
    out = str(tmp_path / "ssrl")
    one_line_refusal(run(out, minivox_ci, dino), "was exported untrained", "--dino_folder")
    assert not os.path.exists(out)
    # a DINO output folder without a trained epoch (e.g. an old number_of_epochs=0 run) is refused too
    os.remove(os.path.join(dino, "pretrained", "export_info.json"))
    one_line_refusal(run(str(tmp_path / "ssrl2"), minivox_ci, dino), "has no DINO training history")


def test_nan_float_wav_and_text_file_in_the_training_csv_never_reach_the_model(prepared_ci, tmp_path):
    """Rows naming a NaN float wav and a text file (a CSV given with ``skip_prep``; the preparation itself
    leaves a NaN float wav out, tests/unit/test_bad_audio.py): each is found by its first read, named once
    and listed in skipped_files.txt; training, validation (BN re-estimated on clean crops) and export go on."""
    import numpy as np
    import soundfile as sf

    out = str(tmp_path / "dino")
    os.makedirs(os.path.join(out, "save"))
    for f in ("test.csv", "veri_test2.txt"):
        shutil.copy(os.path.join(prepared_ci, f), os.path.join(out, "save", f))
    nan_wav, text = str(tmp_path / "nan.wav"), str(tmp_path / "passwd.wav")
    x = (0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)
    x[1000] = np.nan
    sf.write(nan_wav, x, 16000, subtype="FLOAT")
    open(text, "w").write("root:x:0:0:root:/root:/bin/bash\n" * 100)
    lines = open(os.path.join(prepared_ci, "train.csv")).read().splitlines()
    for i, path in ((3, nan_wav), (7, text)):
        cols = lines[i].split(",")
        cols[2] = path
        lines[i] = ",".join(cols)
    open(os.path.join(out, "save", "train.csv"), "w").write("\n".join(lines) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    minivox = os.path.dirname(open(os.path.join(prepared_ci, "test.csv")).read().splitlines()[1].split(",")[2])
    minivox = minivox[: minivox.rindex(os.sep + "wav" + os.sep)]
    cmd = [sys.executable, "train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox}",
           f"--output_folder={out}", "--skip_prep=True", "--channels=[32,32,32,32,96]", "--emb_dim=16",
           "--attention_channels=16", "--batch_size=8", "--n_prototypes=64", "--head_hidden=32",
           "--head_bottleneck=16", "--number_of_epochs=1", "--aug_prob=0", "--bn_recal_batches=3",
           "--bn_recal_batch_size=16", "--noprogressbar"]
    p = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=600)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    listed = [line.split("\t")[0] for line in open(os.path.join(out, "save", "skipped_files.txt"))]
    assert sorted(listed) == sorted([nan_wav, text])
    assert log.count(f"unusable training file {nan_wav}") == 1 and log.count(f"unusable training file {text}") == 1
    rows = history(out)
    assert rows[-1]["eer"] not in ("", "nan") and 0 <= float(rows[-1]["eer"]) <= 100
    assert os.path.isfile(os.path.join(out, "pretrained", "embedding_model.ckpt"))


def test_corrupt_wav_mid_epoch_is_replaced_with_a_warning(prepared_ci, tmp_path, caplog):
    from speechbrain_ssrl.data import views

    rows = views.read_csv_rows(os.path.join(prepared_ci, "train.csv"))[:6]
    bad = tmp_path / "broken.wav"
    with open(rows[2]["wav"], "rb") as f:
        bad.write_bytes(f.read()[:30] + b"\x00garbage" * 10)  # a truncated, corrupt header
    rows[2]["wav"] = str(bad)
    csv_path = tmp_path / "train.csv"
    keys = list(rows[0])
    csv_path.write_text("\n".join([",".join(keys)] + [",".join(r[k] for k in keys) for r in rows]) + "\n")
    sampler = views.CropSampler(seed=3)
    st = views.student_teacher_dataset(str(csv_path), sampler, student_seconds=1.0, teacher_seconds=2.0)
    mc = views.multicrop_dataset(str(csv_path), sampler, n_global=2, global_seconds=1.0, n_local=1, local_seconds=0.5)
    with caplog.at_level("WARNING"):
        items = [st[i] for i in range(len(rows))]
        crops = [mc[i] for i in range(len(rows))]
    assert [it["index"] for it in items] == [0, 1, 3, 3, 4, 5]  # row 2 -> the next row, consistently
    assert torch.equal(items[2]["teacher_view"], items[3]["teacher_view"])
    assert torch.equal(crops[2]["global_views"], crops[3]["global_views"]) and crops[2]["index"] == 3
    assert f"unusable training file {bad}" in caplog.text and "the next CSV row that reads is used" in caplog.text
    # a training DataLoader over it runs through the whole epoch
    from speechbrain.dataio.dataloader import make_dataloader

    batches = list(make_dataloader(st, batch_size=3))
    assert sum(len(b.index) for b in batches) == 6


@pytest.mark.slow
def test_dino_sigkill_mid_epoch_resume_equals_uninterrupted(minivox_ci, tmp_path):
    """Stage 1 as well: SIGKILL in epoch 2 after an intra-epoch checkpoint, resume, compare."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = ["--channels=[32,32,32,32,96]", "--emb_dim=16", "--attention_channels=16", "--batch_size=8",
            "--n_prototypes=64", "--head_hidden=32", "--head_bottleneck=16", "--number_of_epochs=2", "--aug_prob=0",
            "--bn_recal_batches=0", "--validate_every=0", "--valid_trials=none", "--ckpt_interval_steps=2"]

    def dino(out, faults=None):
        e = {k: v for k, v in env.items() if not k.startswith("FAULT_")}
        e.update(faults or {})
        cmd = [sys.executable, WRAPPER, "train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}",
               f"--output_folder={out}", *args, "--noprogressbar"]
        return subprocess.run(cmd, cwd=RECIPE, env=e, capture_output=True, text=True, timeout=600)

    ref, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    assert dino(ref).returncode == 0
    p = dino(out, {"FAULT_KILL_AT": "2:3"})
    assert p.returncode == -9, (p.stdout + p.stderr)[-3000:]
    p = dino(out)
    assert p.returncode == 0 and "Going into epoch 1" not in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    (_, a), (_, b) = checkpoints(ref)[-1], checkpoints(out)[-1]
    for name in ("teacher_model", "teacher_head", "embedding_model", "dino_head", "dino_loss"):
        assert_same(load(a, name), load(b, name), name, rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in history(ref)] == [r["loss"] for r in history(out)]
