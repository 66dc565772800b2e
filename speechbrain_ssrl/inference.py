"""Loading an exported speaker encoder (``export.export_encoder``) with SpeechBrain's inference classes, offline.

SpeechBrain's ``EncoderClassifier`` / ``SpeakerRecognition.from_hparams(source=...)`` load an export folder
directly (absolute, or relative to the current directory). A ``source`` that is not an existing folder
is taken as a HuggingFace model id and looked up online. :func:`load_pretrained` is the
loader for local folders: it resolves a relative path to an absolute one, refuses a path that is not a
model folder (``FileNotFoundError`` naming it), never downloads (``allow_network=False``), and checks that
every weight of ``embedding_model.ckpt`` was loaded (SpeechBrain's pretrainer only warns about missing
keys)::

    from speechbrain_ssrl.inference import load_pretrained
    encoder = load_pretrained("results/ssrl_ecapa/1986/pretrained")     # an SSRLSpeakerEncoder
    emb = encoder.encode_file("utt.wav")                                 # (1, 1, D)
    score, same = encoder.verify_files("enrol.wav", "test.wav")

:class:`SSRLSpeakerEncoder` is SpeechBrain's ``SpeakerRecognition`` (hence an ``EncoderClassifier``) with
``encode_file`` (SpeechBrain 1.1's ``EncoderClassifier`` has none; it is
``encode_batch(load_audio(path).unsqueeze(0))``) and a ``classify_batch`` / ``classify_file`` that say why
they cannot work: the encoder was trained without speaker labels, so the folder has no speaker classifier.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from speechbrain.inference.speaker import SpeakerRecognition

NO_CLASSIFIER = (
    "this model folder has no speaker classifier: the encoder was trained without speaker labels (SSRL / DINO), "
    "so there are no speaker classes to predict. Use encode_batch / encode_file for embeddings and "
    "verify_batch / verify_files (cosine scoring) to compare two recordings."
)


class SSRLSpeakerEncoder(SpeakerRecognition):
    """``SpeakerRecognition`` for an export of this package: ``encode_file``, and ``classify_*`` refused with
    :data:`NO_CLASSIFIER` (unless the folder declares a ``classifier``, then SpeechBrain's)."""

    def encode_file(self, path, normalize: bool = False, **kwargs) -> torch.Tensor:
        """The embedding (1, 1, D) of an audio file; ``load_audio`` converts it to 16 kHz mono first.

        ``kwargs`` go to ``load_audio`` (e.g. ``savedir``); ``normalize`` as in ``encode_batch``."""
        wav = self.load_audio(path, **kwargs)
        return self.encode_batch(wav.unsqueeze(0), torch.ones(1, device=self.device), normalize=normalize)

    def classify_batch(self, wavs, wav_lens=None):
        if "classifier" not in self.mods:
            raise NotImplementedError(NO_CLASSIFIER)
        return super().classify_batch(wavs, wav_lens)

    def classify_file(self, path, **kwargs):
        if "classifier" not in self.mods:
            raise NotImplementedError(NO_CLASSIFIER)
        return super().classify_file(path, **kwargs)

    def forward(self, wavs, wav_lens=None):
        """The embeddings (the model is an encoder)."""
        return self.encode_batch(wavs, wav_lens)


def model_folder(source) -> str:
    """The absolute path of a local model folder (``~`` expanded; relative to the current directory).

    Raises ``FileNotFoundError`` naming the path when it is not a folder holding ``hyperparams.yaml``."""
    given = os.fspath(source)
    path = os.path.abspath(os.path.expanduser(given))
    where = f" (source={given!r}, relative to {os.getcwd()})" if path != given else ""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"model folder {path} does not exist{where}. SpeechBrain would take it for a HuggingFace model id and "
            "try to download it; this loader never downloads: pass the path of an exported folder "
            "(<output_folder>/pretrained)"
        )
    if not os.path.isfile(os.path.join(path, "hyperparams.yaml")):
        raise FileNotFoundError(f"{path}{where} holds no hyperparams.yaml: not a model folder (export one with export_encoder)")
    return path


def load_pretrained(
    source,
    interface: Optional[type] = None,
    device: str = "cpu",
    savedir=None,
    **kwargs,
):
    """``interface.from_hparams`` (default :class:`SSRLSpeakerEncoder`) on a local model folder, offline.

    Args:
        source: the model folder, absolute or relative to the current directory.
        interface: a SpeechBrain ``Pretrained`` class, e.g. ``EncoderClassifier`` or ``SpeakerRecognition``.
        device: where the modules go (``run_opts={"device": ...}``).
        savedir: None (the default) uses the folder's files in place; a folder gets links to them.
        kwargs: more arguments of ``from_hparams`` (``run_opts``, ``overrides``, ...).
    The folder's hyperparams.yaml is executed once, by SpeechBrain (hyperpyyaml runs ``!apply:`` and imports
    ``!new:`` classes): a model folder is code, load only folders you trust.
    """
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy

    from speechbrain_ssrl.export import _load_ckpt, _strict_load

    folder = model_folder(source)
    run_opts = dict(kwargs.pop("run_opts", None) or {})
    run_opts.setdefault("device", device)
    kwargs.setdefault("local_strategy", LocalStrategy.NO_LINK if savedir is None else LocalStrategy.SYMLINK)
    kwargs.setdefault("fetch_config", FetchConfig(allow_network=False))
    cls = interface or SSRLSpeakerEncoder
    model = cls.from_hparams(source=folder, savedir=savedir, run_opts=run_opts, **kwargs)
    ckpt = os.path.join(folder, "embedding_model.ckpt")
    if os.path.isfile(ckpt) and "embedding_model" in model.mods:  # every weight loaded (the pretrainer is not strict)
        _strict_load(model.mods.embedding_model, _load_ckpt(ckpt), ckpt)
        model.mods.embedding_model.to(model.device)
    return model
