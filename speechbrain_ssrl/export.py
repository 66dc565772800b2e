"""Export of a trained ECAPA-TDNN (the EMA teacher) as an ``EncoderClassifier``-loadable folder.

``export_encoder(model_or_ckpt, out_folder)`` writes::

    out_folder/hyperparams.yaml        inference yaml (template: hparams/inference_ecapa.yaml)
    out_folder/embedding_model.ckpt    the encoder's state_dict
    out_folder/mean_var_norm_emb.ckpt  statistics of ``encode_batch(normalize=True)`` (see below)
    out_folder/ecapa.json              the architecture (ECAPA_TDNN keyword arguments)
    out_folder/export_info.json        what was exported from where (marks the folder as ours)

so that ``EncoderClassifier.from_hparams(source=out_folder).encode_batch(wavs, lens)`` returns the
in-training embedding ``ecapa(InputNormalization(sentence)(Fbank(wavs), lens), lens)``, and
``SpeakerRecognition.verify_batch`` / ``verify_files`` score it with the cosine similarity.

``encode_batch(..., normalize=True)`` applies ``mean_var_norm_emb``, SpeechBrain's ``InputNormalization``
(``norm_type: global``, ``std_norm: False``: it subtracts a stored mean) with the statistics in
``mean_var_norm_emb.ckpt``, written by its own saver and loaded by the pretrainer. By default they are the
identity (mean 0, ``count`` 0: ``normalize=True`` returns the embeddings unchanged); with
``export_encoder(..., embedding_stats=E)`` they are the mean of the embeddings ``E`` (N, D), e.g. the
training set's. Folders exported before this file existed have no ``mean_var_norm_emb`` (normalize=True
raises AttributeError there) and still load and verify. There is no speaker classifier (the encoder is
trained without speaker labels), so ``classify_batch`` / ``classify_file`` are not supported; see
``speechbrain_ssrl.inference`` for a loader that resolves relative paths and never downloads.

SpeechBrain's parameter transfer only *warns* about missing or unexpected keys, so the export
verifies them itself: it builds the model from the written yaml, loads the written weights with
``strict=True`` and fails loudly on any mismatch (e.g. a checkpoint of another architecture).
"""

from __future__ import annotations

import copy
import datetime
import glob
import inspect
import json
import logging
import os
import re
import shutil
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "inference_ecapa.yaml"
#: files an export writes (a folder holding only these, and export_info.json, is a previous export)
EMB_NORM_FILE = "mean_var_norm_emb.ckpt"
EXPORT_FILES = ("hyperparams.yaml", "embedding_model.ckpt", EMB_NORM_FILE, "ecapa.json", "export_info.json")
#: checkpoint files of a SpeechBrain ``CKPT+...`` folder that may hold the encoder, best first
CKPT_CANDIDATES = ("teacher.ckpt", "teacher_model.ckpt", "teacher_encoder.ckpt", "embedding_model.ckpt")
#: ``ECAPA_TDNN`` arguments that the recipe yamls set under the same name (``input_size`` and
#: ``lin_neurons`` come from ``n_mels`` and ``emb_dim``); the one list the Brains and checks use
RECIPE_ARCH_KEYS = ("channels", "kernel_sizes", "dilations", "attention_channels", "res2net_scale", "se_channels", "groups")
#: architecture arguments of ``ECAPA_TDNN`` written to the yaml (``device``/``dropout`` are not)
ARCH_KEYS = ("input_size", "lin_neurons") + RECIPE_ARCH_KEYS + ("global_context", "activation")
IGNORED_KEYS = ("device", "dropout")


class ExportError(RuntimeError):
    """The model cannot be exported (wrong architecture, foreign output folder, ...)."""


# --------------------------------------------------------------------------------------------------
# architecture arguments
# --------------------------------------------------------------------------------------------------
def _ecapa_class():
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    return ECAPA_TDNN


def _ecapa_defaults() -> Dict[str, Any]:
    sig = inspect.signature(_ecapa_class().__init__)
    return {k: p.default for k, p in sig.parameters.items() if k in ARCH_KEYS and p.default is not inspect.Parameter.empty}


def _activation_name(act) -> str:
    if isinstance(act, str):
        return act.split(":", 1)[-1].strip()
    if isinstance(act, torch.nn.Module):
        act = type(act)
    return f"{act.__module__}.{act.__qualname__}".replace("torch.nn.modules.activation.", "torch.nn.")


def _import_name(name: str):
    module, _, attr = name.rpartition(".")
    import importlib

    return getattr(importlib.import_module(module), attr)


def normalize_ecapa_kwargs(kwargs: Mapping[str, Any], n_mels: Optional[int] = None) -> Dict[str, Any]:
    """Complete ECAPA_TDNN keyword arguments: defaults filled in, plain JSON types, checked.

    ``activation`` becomes a dotted name (``"torch.nn.ReLU"``); ``device`` and ``dropout`` are dropped
    (no effect on inference). ``input_size`` defaults to ``n_mels`` and must equal it.
    """
    kw = dict(kwargs)
    unknown = sorted(set(kw) - set(ARCH_KEYS) - set(IGNORED_KEYS))
    if unknown:
        raise ExportError(f"unknown ECAPA_TDNN argument(s) {unknown}; known: {list(ARCH_KEYS)}")
    for k in IGNORED_KEYS:
        kw.pop(k, None)
    if "input_size" not in kw:
        if n_mels is None:
            raise ExportError("ecapa_kwargs lacks input_size (the number of mel filterbanks)")
        kw["input_size"] = n_mels
    out = _ecapa_defaults()
    out.update(kw)
    for k in ("channels", "kernel_sizes", "dilations", "groups"):
        out[k] = [int(v) for v in out[k]]
    for k in ("input_size", "lin_neurons", "attention_channels", "res2net_scale", "se_channels"):
        out[k] = int(out[k])
    out["global_context"] = bool(out["global_context"])
    out["activation"] = _activation_name(out["activation"])
    n = len(out["channels"])
    if not (len(out["kernel_sizes"]) == len(out["dilations"]) == len(out["groups"]) == n):
        raise ExportError(f"channels, kernel_sizes, dilations and groups must have the same length: {out}")
    if n_mels is not None and out["input_size"] != int(n_mels):
        raise ExportError(f"ECAPA input_size={out['input_size']} but the front end has n_mels={n_mels}")
    return {k: out[k] for k in ARCH_KEYS}


def ecapa_kwargs_of(model: torch.nn.Module) -> Dict[str, Any]:
    """Reads the architecture arguments back from an ``ECAPA_TDNN`` module."""
    try:
        b0 = model.blocks[0]
        res = [blk for blk in model.blocks[1:]]
        convs = [b0.conv.conv] + [blk.res2net_block.blocks[0].conv.conv for blk in res] + [model.mfa.conv.conv]
        kw = {
            "input_size": b0.conv.conv.in_channels,
            "lin_neurons": model.fc.conv.out_channels,
            "channels": [b0.conv.conv.out_channels] + [blk.out_channels for blk in res] + [model.mfa.conv.conv.out_channels],
            "kernel_sizes": [c.kernel_size[0] for c in convs],
            "dilations": [c.dilation[0] for c in convs],
            "attention_channels": model.asp.tdnn.conv.conv.out_channels,
            "res2net_scale": res[0].res2net_block.scale if res else 8,
            "se_channels": res[0].se_block.conv1.conv.out_channels if res else 128,
            "global_context": bool(model.asp.global_context),
            "groups": [b0.conv.conv.groups] + [blk.tdnn1.conv.conv.groups for blk in res] + [model.mfa.conv.conv.groups],
            "activation": type(b0.activation),
        }
    except (AttributeError, IndexError, TypeError) as e:
        raise ExportError(f"cannot read the ECAPA_TDNN architecture of {type(model).__name__} ({e}); pass ecapa_kwargs") from e
    return normalize_ecapa_kwargs(kw)


def build_ecapa(kwargs: Mapping[str, Any]) -> torch.nn.Module:
    kw = dict(kwargs)
    if isinstance(kw.get("activation"), str):
        kw["activation"] = _import_name(kw["activation"])
    return _ecapa_class()(**kw)


def _read_arch_file(folder: str) -> Optional[Dict[str, Any]]:
    for name in ("ecapa.json", "ecapa.yaml"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                if name.endswith(".json"):
                    return json.load(f)
                import yaml

                return yaml.safe_load(f)
    return None


def _arch_from_training_yaml(path: str) -> Optional[Dict[str, Any]]:
    """ECAPA kwargs from a (SpeechBrain-written, references resolved) training ``hyperparams.yaml``:
    the ``!new:...ECAPA_TDNN`` mapping under ``teacher_model`` or ``embedding_model``."""
    from ruamel.yaml import YAML

    try:
        with open(path, encoding="utf-8") as f:
            doc = YAML(typ="rt").load(f)
    except Exception as e:  # noqa: BLE001 - an unreadable yaml just gives no architecture
        logger.warning("could not parse %s for the ECAPA architecture: %s", path, e)
        return None
    if not isinstance(doc, Mapping):
        return None

    def plain(v):
        tag = getattr(getattr(v, "tag", None), "value", None)
        if tag and tag.startswith("!ref"):
            m = re.fullmatch(r"<([\w.]+)>", str(getattr(v, "value", v)).strip())
            return plain(doc.get(m.group(1))) if m else None
        if tag and tag.startswith("!name:"):
            return tag[len("!name:") :]
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    for key in ("teacher_model", "teacher", "embedding_model"):
        node = doc.get(key)
        tag = getattr(getattr(node, "tag", None), "value", None) or ""
        if isinstance(node, Mapping) and tag.endswith("ECAPA_TDNN"):
            kw = {k: plain(v) for k, v in node.items() if k in ARCH_KEYS}
            if any(v is None for v in kw.values()):
                return None
            return kw
    return None


def find_ecapa_kwargs(path: str) -> Optional[Dict[str, Any]]:
    """Architecture next to a checkpoint: ``ecapa.json``/``ecapa.yaml`` in its folder or up to 3
    parents, else the training ``hyperparams.yaml`` of the output folder above ``save/``."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    folders = [folder]
    for _ in range(3):
        folders.append(os.path.dirname(folders[-1]))
    for d in folders:
        kw = _read_arch_file(d)
        if kw is not None:
            return kw
    for d in folders[1:]:
        hp = os.path.join(d, "hyperparams.yaml")
        if os.path.isfile(hp) and not is_export_folder(d):
            kw = _arch_from_training_yaml(hp)
            if kw is not None:
                return kw
    return None


# --------------------------------------------------------------------------------------------------
# sources: modules, state_dicts, checkpoint files and folders
# --------------------------------------------------------------------------------------------------
def is_export_folder(folder: str) -> bool:
    """A folder written by :func:`export_encoder` (or any EncoderClassifier folder of this layout)."""
    return os.path.isfile(os.path.join(folder, "hyperparams.yaml")) and os.path.isfile(os.path.join(folder, "embedding_model.ckpt"))


def _ckpt_time(folder: str) -> Tuple[float, str]:
    meta = os.path.join(folder, "CKPT.yaml")
    t = os.path.getmtime(folder)
    if os.path.isfile(meta):
        import yaml

        try:
            with open(meta, encoding="utf-8") as f:
                t = float((yaml.safe_load(f) or {}).get("unixtime", t))
        except Exception:  # noqa: BLE001
            pass
    return t, os.path.basename(folder)


def latest_checkpoint(folder: str) -> Optional[str]:
    """The newest ``CKPT+*`` folder in ``folder`` or ``folder/save`` (None when there is none)."""
    for d in (folder, os.path.join(folder, "save")):
        ckpts = [c for c in glob.glob(os.path.join(d, "CKPT+*")) if os.path.isdir(c)]
        if ckpts:
            return max(ckpts, key=_ckpt_time)
    return None


def resolve_model_source(path: str) -> Tuple[str, str]:
    """What a model path points at: ``("export", folder)`` or ``("ckpt", file)``.

    Accepted: an export folder (``hyperparams.yaml`` + ``embedding_model.ckpt``); a ``.ckpt`` file;
    a SpeechBrain ``CKPT+...`` folder (``teacher.ckpt``/``teacher_model.ckpt`` preferred over
    ``embedding_model.ckpt``); a training output folder (its ``pretrained/`` export when present,
    else the newest checkpoint under ``save/``).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        return "ckpt", path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model {path} does not exist (pass an exported folder, a checkpoint folder or a .ckpt file)")
    if is_export_folder(path):
        return "export", path
    for name in CKPT_CANDIDATES:
        if os.path.isfile(os.path.join(path, name)):
            return "ckpt", os.path.join(path, name)
    if is_export_folder(os.path.join(path, "pretrained")):
        return "export", os.path.join(path, "pretrained")
    ckpt = latest_checkpoint(path)
    if ckpt is not None:
        for name in CKPT_CANDIDATES:
            if os.path.isfile(os.path.join(ckpt, name)):
                return "ckpt", os.path.join(ckpt, name)
        raise ExportError(f"checkpoint {ckpt} holds none of {list(CKPT_CANDIDATES)}")
    raise ExportError(
        f"{path} is neither an exported model (hyperparams.yaml + embedding_model.ckpt), nor a checkpoint "
        f"folder ({' / '.join(CKPT_CANDIDATES)}), nor a training output folder with pretrained/ or save/CKPT+*"
    )


def _load_ckpt(path: str) -> Dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ExportError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def _export_yaml_kwargs(folder: str) -> Tuple[Dict[str, Any], int]:
    """(ECAPA kwargs, n_mels) of an export folder: its ``ecapa.json``, else its hyperparams.yaml read as
    data (the ``embedding_model`` mapping, references followed). Nothing in the yaml is executed: a model
    folder is code for hyperpyyaml (``!apply:``), and only ``EncoderClassifier.from_hparams`` runs it."""
    kw = _read_arch_file(folder)
    path = os.path.join(folder, "hyperparams.yaml")
    if kw is None:
        kw = _arch_from_training_yaml(path)
    if kw is None:
        raise ExportError(
            f"{folder}: no ecapa.json and no ECAPA_TDNN `embedding_model` in {path}: not an export of this package"
        )
    n_mels = kw.get("input_size")
    if n_mels is None:
        from ruamel.yaml import YAML

        with open(path, encoding="utf-8") as f:
            doc = YAML(typ="rt").load(f)
        n_mels = doc.get("n_mels", 80) if isinstance(doc, Mapping) else 80
    return dict(kw), int(n_mels)


def _match_keys(sd: Mapping[str, torch.Tensor], expected: Iterable[str]) -> Dict[str, torch.Tensor]:
    """The sub-dict of ``sd`` under the prefix (``""``, ``"module."``, ``"encoder."``, ...) whose keys
    are exactly ``expected``; ``sd`` itself when no prefix fits (the strict load then names the
    mismatching keys)."""
    expected = set(expected)
    anchor = "blocks.0.conv.conv.weight"
    prefixes = [""] + sorted({k[: -len(anchor)] for k in sd if k.endswith(anchor) and k != anchor}, key=len)
    for p in prefixes:
        sub = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
        if set(sub) == expected:
            if p:
                logger.info("using the encoder weights under the prefix %r", p)
            return sub
    if len(prefixes) > 1:  # an encoder under a prefix, but not this architecture: report its keys
        return {k[len(prefixes[1]) :]: v for k, v in sd.items() if k.startswith(prefixes[1])}
    return dict(sd)


def _strict_load(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    expected = set(model.state_dict())
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise ExportError(
            f"the weights in {where} do not fit the ECAPA_TDNN architecture "
            f"({len(missing)} missing key(s): {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"{len(unexpected)} unexpected key(s): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}). "
            "Is it a checkpoint of another model? Pass the matching ecapa_kwargs."
        )
    own = model.state_dict()
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ExportError(
            f"the weights in {where} do not fit the ECAPA_TDNN architecture ({len(bad)} shape mismatch(es), "
            f"checkpoint vs model: {bad[:3]}{' ...' if len(bad) > 3 else ''}). Is it a checkpoint of another "
            "architecture? Pass the matching ecapa_kwargs."
        )
    model.load_state_dict(sd, strict=True)


def load_encoder(
    model_or_ckpt: Union[torch.nn.Module, Mapping[str, torch.Tensor], str, "os.PathLike[str]"],
    ecapa_kwargs: Optional[Mapping[str, Any]] = None,
    n_mels: int = 80,
) -> Tuple[torch.nn.Module, Dict[str, Any], str]:
    """An ``ECAPA_TDNN`` (eval mode, CPU) rebuilt from any accepted source, its kwargs and a description.

    The weights are loaded with ``strict=True`` into a model built from the (normalised) kwargs.
    """
    src_desc: str
    module = None
    if isinstance(model_or_ckpt, torch.nn.Module):
        module = model_or_ckpt
        if hasattr(module, "module") and isinstance(module.module, torch.nn.Module):  # DDP / DataParallel
            module = module.module
        sd = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        kw = ecapa_kwargs if ecapa_kwargs is not None else ecapa_kwargs_of(module)
        src_desc = f"module {type(module).__name__}"
    elif isinstance(model_or_ckpt, Mapping):
        if ecapa_kwargs is None:
            raise ExportError("exporting a state_dict needs ecapa_kwargs (the ECAPA_TDNN architecture)")
        sd, kw, src_desc = dict(model_or_ckpt), ecapa_kwargs, "state_dict"
    else:
        kind, path = resolve_model_source(os.fspath(model_or_ckpt))
        if kind == "export":
            kw_found, n_mels_found = _export_yaml_kwargs(path)
            kw = ecapa_kwargs if ecapa_kwargs is not None else kw_found
            n_mels = n_mels_found
            path = os.path.join(path, "embedding_model.ckpt")
        else:
            kw = ecapa_kwargs if ecapa_kwargs is not None else find_ecapa_kwargs(path)
            if kw is None:
                raise ExportError(
                    f"no architecture for {path}: pass ecapa_kwargs, or put an ecapa.json (ECAPA_TDNN keyword "
                    "arguments) next to the checkpoint or in the training output folder"
                )
        sd, src_desc = _load_ckpt(path), path
    kw = normalize_ecapa_kwargs(kw, n_mels)
    model = build_ecapa(kw).eval()
    _strict_load(model, _match_keys(sd, model.state_dict()), src_desc)
    if module is not None:
        _check_same_function(module, model, kw)
    return model, kw, src_desc


@torch.no_grad()
def _check_same_function(module: torch.nn.Module, rebuilt: torch.nn.Module, kw: Mapping[str, Any]) -> None:
    """The rebuilt model computes what the given module computes (catches e.g. wrong dilations)."""
    ref = copy.deepcopy(module).cpu().float().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 150, kw["input_size"], generator=g)
    lens = torch.tensor([1.0, 0.8])
    a, b = ref(x, lens), rebuilt(x, lens)
    if a.shape != b.shape or not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise ExportError(
            "the model rebuilt from ecapa_kwargs does not compute the same embedding as the given module "
            f"(max abs diff {float((a - b).abs().max()) if a.shape == b.shape else 'shape ' + str(tuple(b.shape))}); "
            f"check ecapa_kwargs (dilations, activation, ...): {dict(kw)}"
        )


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def template_path() -> str:
    """The inference yaml template shipped with the package (``speechbrain_ssrl/hparams``, its only copy)."""
    try:
        from importlib.resources import files

        p = files("speechbrain_ssrl") / "hparams" / TEMPLATE_NAME
        if p.is_file():
            return str(p)
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    cand = os.path.join(here, "hparams", TEMPLATE_NAME)
    if os.path.isfile(cand):
        return cand
    raise FileNotFoundError(f"inference template {TEMPLATE_NAME} not found (reinstall speechbrain-ssrl)")


def _yaml_value(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return str(v)


def render_inference_yaml(kw: Mapping[str, Any], n_mels: int, template: Optional[str] = None) -> str:
    """The template's text with ``n_mels`` and the architecture lines replaced."""
    with open(template or template_path(), encoding="utf-8") as f:
        text = f.read()
    values = {"n_mels": str(int(n_mels))}
    for k in ARCH_KEYS:
        if k == "input_size":
            continue
        values[k] = f"!name:{kw[k]}" if k == "activation" else _yaml_value(kw[k])
    for k, v in values.items():
        text, n = re.subn(rf"^{k}:.*$", f"{k}: {v}", text, count=1, flags=re.M)
        if n != 1:
            raise ExportError(f"the inference template {template or template_path()} has no top-level '{k}:' line")
    return text


def _prepare_folder(out: str, overwrite: bool, extra_names: Iterable[str]) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"export folder {out} exists and is not a folder")
    if not os.path.isdir(out):
        os.makedirs(out)
        return
    content = sorted(os.listdir(out))
    if not content:
        return
    info_path = os.path.join(out, "export_info.json")
    ours = set(EXPORT_FILES) | set(extra_names)
    if os.path.isfile(info_path):
        try:
            with open(info_path, encoding="utf-8") as f:
                ours |= set(json.load(f).get("files", []))
        except (OSError, ValueError):
            pass
    foreign = [c for c in content if c not in ours]
    previous = os.path.isfile(info_path) and not foreign
    if not overwrite:
        kind = "a previous export" if previous else "other content"
        raise ExportError(
            f"export folder {out} already exists with {kind} ({content[:6]}{' ...' if len(content) > 6 else ''}); "
            "pass overwrite=True to replace an export, or choose another folder"
        )
    if foreign and not previous:
        raise ExportError(
            f"export folder {out} holds files that are not from an export ({foreign[:6]}); refusing to overwrite "
            "it even with overwrite=True: choose an empty or new folder"
        )
    for c in content:
        p = os.path.join(out, c)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)


def _extra_items(extra_files) -> Dict[str, str]:
    if not extra_files:
        return {}
    if isinstance(extra_files, Mapping):
        items = {str(k): os.fspath(v) for k, v in extra_files.items()}
    else:
        items = {os.path.basename(os.fspath(p)): os.fspath(p) for p in extra_files}
    for name, src in items.items():
        if name in EXPORT_FILES or os.path.basename(name) != name:
            raise ExportError(f"extra file name {name!r} is reserved or not a plain file name")
        if not os.path.exists(src):
            raise FileNotFoundError(f"extra file {src} does not exist")
    return items


def embedding_norm(dim: int, embeddings=None, source_file: Optional[str] = None):
    """The export's ``mean_var_norm_emb``: SpeechBrain's ``InputNormalization`` (global, mean only) holding
    the mean of ``embeddings`` (N, D) or (N, 1, D), computed by its own running update; else the statistics
    in ``source_file`` (a previous export's ``mean_var_norm_emb.ckpt``); else the identity (mean 0, count 0)."""
    from speechbrain.processing.features import InputNormalization

    norm = InputNormalization(norm_type="global", std_norm=False)
    if embeddings is not None:
        e = torch.as_tensor(embeddings).detach().float().cpu()
        if e.dim() == 3 and e.shape[1] == 1:
            e = e[:, 0]
        if e.dim() != 2 or e.shape[1] != int(dim) or e.shape[0] < 1:
            raise ExportError(f"embedding_stats must be (N, {dim}) or (N, 1, {dim}) embeddings with N >= 1, got {tuple(e.shape)}")
        if not torch.isfinite(e).all():
            raise ExportError("embedding_stats holds non-finite values")
        norm.train()
        with torch.no_grad():
            for chunk in e.split(65536):
                norm(chunk.unsqueeze(1), torch.ones(chunk.shape[0]))
        norm.eval()
        return norm
    if source_file is not None:
        stats = _read_norm_stats(source_file, dim)
        norm.count, norm.glob_mean, norm.glob_std = stats["count"], stats["glob_mean"], stats["glob_std"]
        return norm
    norm.count, norm.glob_mean, norm.glob_std = 0, torch.zeros(int(dim)), torch.ones(int(dim))
    return norm


def _read_norm_stats(path: str, dim: int) -> Dict[str, Any]:
    """``mean_var_norm_emb.ckpt`` (InputNormalization's saved dict), checked: ``glob_mean`` (dim,) finite."""
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable or not a torch file
        raise ExportError(f"cannot read {path}: {e}") from None
    ok = isinstance(stats, Mapping) and all(k in stats for k in ("count", "glob_mean", "glob_std"))
    mean = stats.get("glob_mean") if ok else None
    if not ok or not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (int(dim),) or not torch.isfinite(mean).all():
        raise ExportError(
            f"{path} does not hold InputNormalization statistics of {dim}-d embeddings "
            "(count, glob_mean of shape (lin_neurons,), glob_std)"
        )
    return dict(stats)


def _source_norm_file(model_or_ckpt) -> Optional[str]:
    """A previous export's ``mean_var_norm_emb.ckpt`` when the source is such a folder (kept on re-export)."""
    if isinstance(model_or_ckpt, (torch.nn.Module, Mapping)):
        return None
    try:
        kind, path = resolve_model_source(os.fspath(model_or_ckpt))
    except (OSError, ExportError):
        return None
    f = os.path.join(path, EMB_NORM_FILE)
    return f if kind == "export" and os.path.isfile(f) else None


def export_encoder(
    model_or_ckpt,
    out_folder,
    *,
    ecapa_kwargs: Optional[Mapping[str, Any]] = None,
    n_mels: int = 80,
    overwrite: bool = False,
    extra_files=None,
    embedding_stats=None,
) -> str:
    """Writes an ``EncoderClassifier``-loadable folder for an ECAPA-TDNN encoder.

    Args:
        model_or_ckpt: an ``ECAPA_TDNN`` module (the EMA teacher; its architecture is read from it
            unless ``ecapa_kwargs`` is given), a state_dict, a ``.ckpt`` file, a SpeechBrain
            ``CKPT+...`` folder (``teacher.ckpt`` / ``teacher_model.ckpt`` preferred over
            ``embedding_model.ckpt``), a training output folder (newest ``save/CKPT+*``) or a
            previous export; a training output folder gives its ``pretrained/`` export when there is
            one. Weights under a prefix (``module.``, ``encoder.``, ...) are found.
        out_folder: the export folder (created). A non-empty folder is an error unless
            ``overwrite=True`` and it holds a previous export.
        ecapa_kwargs: ``ECAPA_TDNN`` keyword arguments (input_size, channels, kernel_sizes,
            dilations, attention_channels, lin_neurons, ...). Needed for state_dicts; for files it is
            otherwise read from an ``ecapa.json``/``ecapa.yaml`` next to the checkpoint (or up to 3
            folders above) or from the training ``hyperparams.yaml`` above ``save/``.
        n_mels: filterbank channels of the front end (= ECAPA input_size).
        extra_files: paths (or a mapping name -> path) copied into the folder (e.g. results.json).
        embedding_stats: embeddings (N, D) or (N, 1, D) whose mean ``encode_batch(normalize=True)``
            subtracts (``mean_var_norm_emb.ckpt``). None: the statistics of the source when it is an
            export that has them, else the identity (mean 0).
    Returns:
        the absolute export folder.
    """
    out = os.path.abspath(os.fspath(out_folder))
    model, kw, src_desc = load_encoder(model_or_ckpt, ecapa_kwargs, n_mels)
    n_mels = int(kw["input_size"])
    emb_norm = embedding_norm(kw["lin_neurons"], embedding_stats, _source_norm_file(model_or_ckpt))
    extras = _extra_items(extra_files)
    if not isinstance(model_or_ckpt, (torch.nn.Module, Mapping)):
        src = os.path.abspath(os.fspath(model_or_ckpt))
        if src == out or os.path.dirname(src) == out:
            raise ExportError(f"cannot export {src} onto itself: choose another out_folder")
    _prepare_folder(out, overwrite, extras)

    yaml_text = render_inference_yaml(kw, n_mels)
    with open(os.path.join(out, "hyperparams.yaml"), "w", encoding="utf-8") as f:
        f.write(yaml_text)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "embedding_model.ckpt"))
    emb_norm._save(os.path.join(out, EMB_NORM_FILE))  # SpeechBrain's own saver; its loader reads it back
    with open(os.path.join(out, "ecapa.json"), "w", encoding="utf-8") as f:
        json.dump(kw, f, indent=1)
    for name, src in extras.items():
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(out, name))
    info = {
        "exported_by": "speechbrain_ssrl.export.export_encoder",
        "source": src_desc,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "n_mels": n_mels,
        "ecapa_kwargs": kw,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "mean_var_norm_emb": "identity (mean 0)" if emb_norm.count == 0 else f"mean of {emb_norm.count} embeddings",
        "files": list(EXPORT_FILES) + sorted(extras),
    }
    with open(os.path.join(out, "export_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    verify_export(out)
    logger.info("exported %s to %s", src_desc, out)
    return out


def verify_export(folder: str) -> torch.nn.Module:
    """Checks an export folder without executing its hyperparams.yaml: the yaml (read as data) declares the
    keys ``EncoderClassifier`` needs and an ECAPA_TDNN ``embedding_model``, and ``embedding_model.ckpt``
    loads strictly into the architecture it declares; a declared ``mean_var_norm_emb`` needs a
    ``mean_var_norm_emb.ckpt`` of the embedding size (folders exported before it existed declare none).

    Raises :class:`ExportError` naming the missing/unexpected keys and the file on a mismatch.
    Returns the loaded encoder (built from the declared architecture).
    """
    from ruamel.yaml import YAML

    folder = os.path.abspath(folder)
    path = os.path.join(folder, "hyperparams.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            doc = YAML(typ="rt").load(f)
    except Exception as e:  # noqa: BLE001 - missing file, yaml syntax
        raise ExportError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, Mapping):
        raise ExportError(f"{path} is not a yaml mapping")
    for key in ("modules", "pretrainer", "compute_features", "mean_var_norm", "embedding_model"):
        if key not in doc:
            raise ExportError(f"{folder}/hyperparams.yaml lacks '{key}'")
    kw, n_mels = _export_yaml_kwargs(folder)
    model = build_ecapa(normalize_ecapa_kwargs(kw, n_mels))
    ckpt = os.path.join(folder, "embedding_model.ckpt")
    _strict_load(model, _load_ckpt(ckpt), ckpt)
    if "mean_var_norm_emb" in doc:
        norm_file = os.path.join(folder, EMB_NORM_FILE)
        if not os.path.isfile(norm_file):
            raise ExportError(f"{path} declares mean_var_norm_emb but {norm_file} does not exist")
        _read_norm_stats(norm_file, int(kw["lin_neurons"]))
    return model.eval()


def load_embed_fn(model_path, device: str = "cpu", savedir: Optional[str] = None, ecapa_kwargs=None):
    """``(embed_fn, description)`` for a model path, through ``EncoderClassifier``.

    An exported folder is loaded directly (absolute path, offline); a checkpoint or training output
    folder is first exported to ``savedir`` (a temporary folder when None). The folder's hyperparams.yaml
    is executed once, by ``EncoderClassifier.from_hparams`` (hyperpyyaml runs ``!apply:`` and imports
    ``!new:`` classes): a model folder is code, load only folders you trust.
    ``embed_fn(wavs (B, T), lens (B,)) -> (B, D)`` (not normalised).
    """
    from speechbrain.inference.speaker import EncoderClassifier

    from speechbrain_ssrl.inference import load_pretrained

    kind, path = resolve_model_source(os.fspath(model_path))
    if kind == "export":
        verify_export(path)
        folder = path
    else:
        import tempfile

        folder = os.path.join(savedir or tempfile.mkdtemp(prefix="ssrl_export_"), "exported_model")
        export_encoder(path, folder, ecapa_kwargs=ecapa_kwargs, overwrite=True)
    # the one execution of the folder's hyperparams.yaml (SpeechBrain's): a model folder is code; offline,
    # every weight of embedding_model.ckpt checked as loaded
    clf = load_pretrained(folder, interface=EncoderClassifier, device=device)

    def embed_fn(wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        emb = clf.encode_batch(wavs.to(device), lens.to(device))
        return emb.reshape(emb.shape[0], -1)

    return embed_fn, f"{kind} {path}"
