"""Every top-level key of every recipe yaml is read by its script or by the plugin.

SpeechBrain's ``tests/utils/check_yaml.py`` checks a yaml against its script only; here the Brains live
in the plugin (``speechbrain_ssrl``), so a key counts as read when the script, the plugin or SpeechBrain's
run options name it (``hparams["key"]``, ``hparams.get("key")``, ``getattr(h, "key")``, ``h.key``), or when
another key of the same yaml refers to it (``!ref <key>``). A key nothing reads is a setting that silently
does nothing: the test names it.
"""

from __future__ import annotations

import glob
import os
import re

import pytest

from speechbrain_ssrl.recipe_checks import yaml_top_level_keys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb", "SSRL")
PLUGIN = os.path.join(REPO, "speechbrain_ssrl")
SB_SOURCE = os.environ.get("SPEECHBRAIN_SOURCE", "")

# yaml -> the script that loads it (relative to the recipe); SpeechBrain's scorer is not in this repository
SCRIPTS = {
    "dino_ecapa.yaml": "train.py",
    "ssrl_ecapa.yaml": "train.py",
    "iterative_ecapa.yaml": "train.py",
    "verification.yaml": "evaluate.py",
    "verification_speechbrain.yaml": os.path.join(SB_SOURCE, "recipes", "VoxCeleb", "SpeakerRec",
                                                  "speaker_verification_cosine.py"),
}


def _yamls():
    return sorted(glob.glob(os.path.join(RECIPE, "hparams", "**", "*.yaml"), recursive=True))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _plugin_source():
    return "\n".join(_read(p) for p in sorted(glob.glob(os.path.join(PLUGIN, "**", "*.py"), recursive=True)))


def _run_option_keys():
    from speechbrain.utils.run_opts import RunOptions  # Brain takes these from the yaml too

    return set(RunOptions().as_dict())


def _read_in(key: str, source: str) -> bool:
    k = re.escape(key)
    return re.search(rf"""(\[\s*["']{k}["']\s*\])|(["']{k}["'])|(\.{k}\b)""", source) is not None


def unused_keys(yaml_path: str, script_path: str, with_plugin: bool = True):
    text = _read(yaml_path)
    keys = [k for k in yaml_top_level_keys(text) if not k.startswith("__")]
    referenced = set(re.findall(r"<([A-Za-z_][A-Za-z0-9_]*)", text))
    source = _read(script_path) + ("\n" + _plugin_source() if with_plugin else "")
    run_opts = _run_option_keys()
    return [k for k in keys if k not in referenced and k not in run_opts and not _read_in(k, source)]


def test_the_table_names_every_yaml():
    names = {os.path.basename(p) for p in _yamls()}
    assert names <= set(SCRIPTS), f"add {sorted(names - set(SCRIPTS))} to SCRIPTS"


@pytest.mark.parametrize("yaml_path", _yamls(), ids=lambda p: os.path.relpath(p, RECIPE))
def test_every_yaml_key_is_read(yaml_path):
    script = SCRIPTS[os.path.basename(yaml_path)]
    script = script if os.path.isabs(script) else os.path.join(RECIPE, script)
    if not os.path.isfile(script):
        pytest.skip(f"{script} not here (set SPEECHBRAIN_SOURCE to a SpeechBrain source tree)")
    with_plugin = os.path.basename(yaml_path) != "verification_speechbrain.yaml"  # read by SpeechBrain's script alone
    unused = unused_keys(yaml_path, script, with_plugin)
    assert not unused, f"{os.path.relpath(yaml_path, REPO)}: keys nothing reads: {', '.join(unused)}"


def test_the_check_finds_an_unused_key(tmp_path):
    y = tmp_path / "x.yaml"
    y.write_text("batch_size: 8\nlr: !ref <base>\nbase: 0.1\nnever_read_anywhere_zz: 3\n__set: !apply:print []\n")
    s = tmp_path / "s.py"
    s.write_text('bs = hparams["batch_size"]\nlr = hparams.lr\n')
    assert unused_keys(str(y), str(s), with_plugin=False) == ["never_read_anywhere_zz"]
