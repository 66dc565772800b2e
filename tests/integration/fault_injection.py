"""Runs a recipe script with faults injected at exact points (a test helper, used as a subprocess).

    python fault_injection.py train.py hparams/x.yaml --key=value ...

Environment:
    FAULT_KILL_AT=E:S      SIGKILL this process in epoch E, batch S (1-based), after the batch's forward
                           pass and loss (its pseudo-label records exist, its optimiser step has not run)
    FAULT_KILL_IN_SAVE=K   SIGKILL this process during the K-th checkpoint save, after 3 files of it
    FAULT_NAN_AT=E:S,...   the loss of these batches becomes NaN
"""

import os
import runpy
import signal
import sys


def _pairs(text):
    return {tuple(int(x) for x in p.split(":")) for p in text.split(",") if p.strip()}


def install():
    import torch

    from speechbrain_ssrl.brains.base import SSLBrainBase
    from speechbrain_ssrl.checkpoints import AtomicCheckpointer

    kill_at = _pairs(os.environ.get("FAULT_KILL_AT", ""))
    nan_at = _pairs(os.environ.get("FAULT_NAN_AT", ""))
    if kill_at or nan_at:
        orig_fit_batch = SSLBrainBase.fit_batch

        def fit_batch(self, batch):
            here = (int(self.hparams.epoch_counter.current), int(self.step))
            orig_objectives = self.compute_objectives

            def compute_objectives(predictions, b, stage):
                loss = orig_objectives(predictions, b, stage)
                if here in kill_at:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                if here in nan_at:
                    loss = loss * float("nan")
                return loss

            self.compute_objectives = compute_objectives
            try:
                return orig_fit_batch(self, batch)
            finally:
                del self.compute_objectives

        SSLBrainBase.fit_batch = fit_batch

    kill_in_save = int(os.environ.get("FAULT_KILL_IN_SAVE", "0") or 0)
    if kill_in_save:
        orig_save = AtomicCheckpointer.save_checkpoint
        orig_torch_save = torch.save
        count = {"saves": 0}

        def save_checkpoint(self, *args, **kwargs):
            count["saves"] += 1
            if count["saves"] != kill_in_save:
                return orig_save(self, *args, **kwargs)
            written = {"n": 0}

            def torch_save(obj, f, *a, **kw):
                orig_torch_save(obj, f, *a, **kw)
                written["n"] += 1
                if written["n"] >= 3:
                    os.kill(os.getpid(), signal.SIGKILL)

            torch.save = torch_save
            try:
                return orig_save(self, *args, **kwargs)
            finally:
                torch.save = orig_torch_save

        AtomicCheckpointer.save_checkpoint = save_checkpoint


if __name__ == "__main__":
    script = os.path.abspath(sys.argv[1])
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(script))
    install()
    runpy.run_path(script, run_name="__main__")
