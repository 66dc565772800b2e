#!/usr/bin/env python3
"""VoxCeleb data preparation for the SSRL recipe (a thin wrapper around the plugin).

``prepare_voxceleb`` lives in ``speechbrain_ssrl.data.voxceleb``; this file re-exports it so that the
recipe keeps SpeechBrain's usual ``from voxceleb_prepare import prepare_voxceleb``. It writes
``train.csv`` (speakers not in the trial list) and ``test.csv`` (the trial list's files), both with
the header ``ID,duration,wav,start,stop,spk_id``.

When the recipe sits in a SpeechBrain checkout (``recipes/VoxCeleb/SSRL``), the training files come from
SpeechBrain's shared ``../voxceleb_prepare.py`` (yaml key ``voxceleb_prepare``: ``auto`` takes it when it
is there, ``speechbrain`` requires it, ``ssrl`` never uses it); see ``speechbrain_ssrl.data.shared_prepare``.

Example::

    python voxceleb_prepare.py --data_folder /data/vox1,/data/vox2 --save_folder results/prep \\
        --verification_pairs_file /data/vox1/veri_test2.txt
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

from speechbrain_ssrl.data.shared_prepare import MODES, resolve_shared_prepare
from speechbrain_ssrl.data.voxceleb import convert_m4a_to_wav, prepare_voxceleb

__all__ = ["prepare_voxceleb", "convert_m4a_to_wav", "shared_prepare_for", "main"]

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))


def shared_prepare_for(mode: str = "auto") -> Optional[str]:
    """SpeechBrain's shared ``voxceleb_prepare.py`` next to this recipe for yaml key ``voxceleb_prepare``
    (``auto`` / ``speechbrain`` / ``ssrl``), or None for the plugin's own file listing."""
    return resolve_shared_prepare(mode, RECIPE_DIR)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: prepares the CSVs and prints where they are."""
    ap = argparse.ArgumentParser(description="VoxCeleb/MiniVox folders -> SpeechBrain CSVs for SSRL.")
    ap.add_argument("--data_folder", required=True, help="corpus root(s) holding wav/ (comma-separated)")
    ap.add_argument("--save_folder", required=True, help="where train.csv / test.csv go")
    ap.add_argument("--verification_pairs_file", required=True, help="veri_test2.txt-format trial list")
    ap.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    ap.add_argument("--min_duration", type=float, default=1.0, help="skip training files shorter than this (s)")
    ap.add_argument("--convert_m4a", action="store_true", help="convert VoxCeleb2 aac/**/*.m4a to wav/ first")
    ap.add_argument("--jobs", type=int, default=2, help="ffmpeg processes for --convert_m4a")
    ap.add_argument("--voxceleb_prepare", default="auto", choices=MODES,
                    help="training list from SpeechBrain's shared ../voxceleb_prepare.py (auto: when present)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = prepare_voxceleb(
        a.data_folder, a.save_folder, a.verification_pairs_file, splits=a.splits,
        min_duration=a.min_duration, convert_m4a=a.convert_m4a, jobs=a.jobs,
        shared_prepare=shared_prepare_for(a.voxceleb_prepare),
    )
    for split, path in out.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
