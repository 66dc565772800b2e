"""Trial lists: reading, validation errors naming file and line, path resolution over several roots."""

from __future__ import annotations

import os

import pytest

from speechbrain_ssrl.data.trials import (
    Trial,
    TrialListError,
    read_trials,
    resolve_trial_paths,
    split_data_folders,
    trial_files,
    trial_speakers,
    write_trials,
)


def _touch(root, rel):
    path = os.path.join(root, "wav", *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def test_read_write_roundtrip(tmp_path):
    path = tmp_path / "veri_test2.txt"
    path.write_text(
        "# a comment\n"
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
        "\n"
        "0  id10270/x6uYqmx31kE/00001.wav\tid10300/ize_eiCFEg0/00003.wav  \n"
    )
    trials = read_trials(path)
    assert trials == [
        Trial(1, "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav"),
        Trial(0, "id10270/x6uYqmx31kE/00001.wav", "id10300/ize_eiCFEg0/00003.wav"),
    ]
    assert trials[1].enrol_spk == "id10270" and trials[1].test_spk == "id10300"
    assert trial_speakers(trials) == {"id10270", "id10300"}
    assert trial_files(trials) == [
        "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav", "id10300/ize_eiCFEg0/00003.wav",
    ]
    out = tmp_path / "copy.txt"
    write_trials(trials, out)
    assert read_trials(out) == trials


@pytest.mark.parametrize(
    "line, message",
    [
        ("1 a/b/c.wav", "expected '<0|1> <enrol.wav> <test.wav>'"),
        ("1 a/b/c.wav a/b/d.wav extra", "4 fields"),
        ("2 a/b/c.wav a/b/d.wav", "label must be 0 or 1"),
        ("yes a/b/c.wav a/b/d.wav", "label must be 0 or 1"),
        ("1 /abs/b/c.wav a/b/d.wav", "absolute"),
        ("1 a/../c.wav a/b/d.wav", "'..'"),
        ("1 c.wav a/b/d.wav", "not of the form"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "trials.txt"
    path.write_text("1 a/b/c.wav a/b/d.wav\n" + line + "\n")
    with pytest.raises(TrialListError) as err:
        read_trials(path)
    assert f"{path}, line 2" in str(err.value) and message in str(err.value)


def test_empty_and_missing_lists(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(TrialListError, match="holds no trial"):
        read_trials(empty)
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        read_trials(tmp_path / "missing.txt")


def test_resolve_over_several_roots(tmp_path):
    r1, r2 = str(tmp_path / "vox1"), str(tmp_path / "vox2")
    a = _touch(r1, "id1/v/00001.wav")
    b = _touch(r2, "id2/v/00001.wav")
    _touch(r2, "id1/v/00001.wav")  # the first root wins
    trials = [Trial(0, "id1/v/00001.wav", "id2/v/00001.wav")]
    for folders in ([r1, r2], f"{r1},{r2}", f" {r1} , {r2} "):
        assert resolve_trial_paths(trials, folders) == {"id1/v/00001.wav": a, "id2/v/00001.wav": b}
    with pytest.raises(FileNotFoundError) as err:
        resolve_trial_paths(trials, r1, trials_file="my_trials.txt")
    msg = str(err.value)
    assert "1 file(s) named by the trial list my_trials.txt" in msg and "id2/v/00001.wav" in msg
    assert os.path.join(r1, "wav") in msg and "Fix" in msg


def test_split_data_folders(tmp_path):
    assert split_data_folders("a,b") == [os.path.abspath("a"), os.path.abspath("b")]
    assert split_data_folders(tmp_path) == [str(tmp_path)]
    with pytest.raises(ValueError, match="no data folder"):
        split_data_folders(" , ")


def test_minivox_trials_resolve(minivox_ci):
    trials = read_trials(os.path.join(minivox_ci, "veri_test2.txt"))
    paths = resolve_trial_paths(trials, minivox_ci)
    assert len(paths) == len(trial_files(trials)) and all(os.path.isfile(p) for p in paths.values())


def test_a_list_that_is_not_utf8_is_named_by_read_trials_itself(tmp_path):
    from speechbrain_ssrl.data.trials import TrialListError, read_trials

    bad = tmp_path / "veri_test2.txt"
    bad.write_bytes(b"1 id1/a/1.wav id1/b/2.wav\n\xff\xfe 0 x y\n")
    with pytest.raises(TrialListError, match="not UTF-8 text"):
        read_trials(str(bad))


def test_in_data_folders_finds_a_name_in_any_root(tmp_path):
    """The recipe yamls' defaults of verification_file / noise_folder / rir_folder with several roots."""
    from speechbrain_ssrl.data.trials import in_data_folders

    a, b = tmp_path / "vox2", tmp_path / "vox1"
    (a / "noise").mkdir(parents=True)
    (b / "meta").mkdir(parents=True)
    (b / "meta" / "veri_test2.txt").write_text("1 x/y/1.wav x/z/2.wav\n")
    (b / "rir").mkdir()
    (b / "noise").mkdir()
    roots = f"{a}, {b}"
    assert in_data_folders(roots, "veri_test2.txt") == str(b / "meta" / "veri_test2.txt")
    assert in_data_folders(roots, "noise") == str(a / "noise")  # the first root that has it
    assert in_data_folders([str(b), str(a)], "noise") == str(b / "noise")
    assert in_data_folders(roots, "rir") == str(b / "rir")
    (b / "veri_test2.txt").write_text("")
    assert in_data_folders(roots, "veri_test2.txt") == str(b / "veri_test2.txt")  # the root before its meta/
    # nowhere: the name under the first root, as <data_folder>/<name> gave for one root (the consumer names it)
    assert in_data_folders(roots, "list_test_hard2.txt") == str(a / "list_test_hard2.txt")
    assert in_data_folders(roots, "/elsewhere/musan") == "/elsewhere/musan"
    with pytest.raises(ValueError, match="no data folder given"):
        in_data_folders(" , ", "noise")
