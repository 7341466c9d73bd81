"""Tokenizer, vocabulary, truncation, restricted unpickling, typed configs."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from attngan_fast.config import ConfigError, config_from_dict, load_config, preset_names
from attngan_fast.safe_pickle import UnsafePickleError, load_plain_pickle
from attngan_fast.text import END_TOKEN, Vocabulary, tokenize, truncate


def test_tokenizer_is_the_releases_rule():
    assert tokenize("This Bird has RED wings, and a short-beak!") == ["this", "bird", "has", "red", "wings", "and",
                                                                       "a", "short", "beak"]
    assert tokenize("a café bird\ufffd\ufffdwith 2 wings") == ["a", "caf", "bird", "with", "2", "wings"]
    assert tokenize("... !!") == []


def test_vocabulary_padding_and_order():
    vocab = Vocabulary.build([["b", "a", "b"], ["c", "b", "a"]])
    assert vocab.words == [END_TOKEN, "b", "a", "c"]  # by count, then alphabetical
    ids, unknown = vocab.encode(["a", "zebra", "c", END_TOKEN])
    assert ids == [2, 3] and unknown == ["zebra", END_TOKEN]
    assert vocab.decode([2, 0, 3]) == ["a", "c"]
    with pytest.raises(ValueError, match="starts with"):
        Vocabulary(["a", END_TOKEN])


def test_vocabulary_json_roundtrip(tmp_path):
    vocab = Vocabulary.build([["x", "y"], ["y"]])
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").words == vocab.words


def test_truncation_keeps_an_ordered_random_subset():
    ids = list(range(1, 31))
    seen = set()
    for seed in range(20):
        kept = truncate(ids, 18, random.Random(seed))
        assert len(kept) == 18 and kept == sorted(kept) and set(kept) <= set(ids)
        seen.add(tuple(kept))
    assert len(seen) > 15, "the subset must be random"
    assert truncate([4, 5], 18, random.Random(0)) == [4, 5]


def test_restricted_unpickler_reads_plain_data(tmp_path):
    data = [["k1", "k2"], {"a": (1, 2.5, b"x")}, np.arange(4, dtype=np.int64)]
    path = tmp_path / "plain.pickle"
    path.write_bytes(pickle.dumps(data, protocol=2))
    got = load_plain_pickle(path)
    assert got[0] == ["k1", "k2"] and got[1] == {"a": (1, 2.5, b"x")}
    assert got[2].tolist() == [0, 1, 2, 3]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited_marker",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_plain_pickle(path)
    assert not (tmp_path / "exploited_marker").exists()


def test_restricted_unpickler_refuses_object_arrays(tmp_path):
    path = tmp_path / "objects.pickle"
    path.write_bytes(pickle.dumps(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(UnsafePickleError):
        load_plain_pickle(path)


def test_presets_load_with_released_values():
    assert set(preset_names()) >= {"bird", "coco", "synthetic"}
    bird = load_config("bird")
    assert (bird.damsm.gamma1, bird.damsm.gamma2, bird.damsm.gamma3) == (4.0, 5.0, 10.0)
    assert (bird.damsm.batch_size, bird.damsm.lr, bird.damsm.betas) == (48, 0.002, (0.5, 0.999))
    assert bird.damsm.rnn_grad_clip == 0.25 and bird.data.words_num == 18
    assert load_config("coco").data.captions_per_image == 5


def test_overrides_and_schema_errors(tmp_path):
    cfg = load_config("synthetic", ["damsm.lr=0.01", "runtime.amp=off", "runtime.amp=bf16", "data.root=/x y"])
    assert cfg.damsm.lr == 0.01 and cfg.runtime.amp == "bf16" and cfg.data.root == "/x y"
    assert load_config("synthetic", ["runtime.amp=off"]).runtime.amp == "off"  # YAML's off is not False here
    with pytest.raises(ConfigError, match="unknown config key 'lrate' in damsm"):
        load_config("bird", ["damsm.lrate=1"])
    with pytest.raises(ConfigError, match="damsm.batch_size must be an integer"):
        load_config("bird", ["damsm.batch_size=4.5"])
    with pytest.raises(ConfigError, match="unknown config 'birds'"):
        load_config("birds")
    bad = tmp_path / "bad.yaml"
    bad.write_text("damsm:\n  gamma1: [1, 2]\n")
    with pytest.raises(ConfigError, match="damsm.gamma1 must be a number"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_runtime_autotune_switches_the_kernels_for_the_run(monkeypatch):
    from attngan_fast import kernels
    from attngan_fast.train.runtime import training_runtime

    monkeypatch.delenv(kernels.AUTOTUNE_ENV, raising=False)
    cfg = load_config("bird", ["runtime.autotune=false", "runtime.device=cpu"])
    assert cfg.runtime.autotune is False and load_config("bird").runtime.autotune is True
    with pytest.raises(ConfigError, match="runtime.autotune must be"):
        load_config("bird", ["runtime.autotune=3"])
    with training_runtime(cfg.runtime):
        assert not kernels.autotune_enabled()
    assert kernels.autotune_enabled()  # back to the environment's setting
    if not torch.cuda.is_available():  # a set-up that fails restores the setting too
        failing = load_config("bird", ["runtime.autotune=false", "runtime.device=cuda"]).runtime
        with pytest.raises(RuntimeError, match="no CUDA device"), training_runtime(failing):
            pass
        assert kernels.autotune_enabled()


def test_config_roundtrip():
    cfg = load_config("bird", ["damsm.epochs=3"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    import torch

    from attngan_fast.train.checkpoint import load_checkpoint, save_atomic

    path = tmp_path / "latest.pt"
    save_atomic({"format": "x", "w": torch.ones(3)}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_atomic({"format": "x", "bad": lambda: None}, path)  # cannot be pickled: fails mid-write
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"], "no temporary file left behind"


@pytest.mark.parametrize("spelling, value", [("1e-3", 1e-3), ("2E-4", 2e-4), ("5e2", 500.0), ("+1.5e+1", 15.0),
                                             (".5", 0.5), ("1_000.5", 1000.5), ("3", 3.0)])
def test_floats_as_people_write_them_in_overrides_and_files(tmp_path, spelling, value):
    # PyYAML's YAML 1.1 resolver reads 1e-3 (no dot) as a string; a number field takes every spelling
    # Python's float() takes, from --set and from a file alike.
    assert load_config("synthetic", [f"damsm.lr={spelling}"]).damsm.lr == value
    path = tmp_path / "mine.yaml"
    beta = spelling if value < 1 else "0.5"  # Adam's betas lie in [0, 1)
    path.write_text(f"damsm:\n  lr: {spelling}\n  betas: [{beta}, 0.999]\ngan:\n  max_minutes: {spelling}\n")
    cfg = load_config(path)
    assert cfg.damsm.lr == value and cfg.damsm.betas == (min(value, 0.5), 0.999) and cfg.gan.max_minutes == value
    assert isinstance(cfg.damsm.lr, float)


def test_number_fields_still_refuse_words_and_strings_stay_strings():
    with pytest.raises(ConfigError, match=r"damsm.lr must be a number, got 'fast'"):
        load_config("synthetic", ["damsm.lr=fast"])
    # An integer field takes a whole number however it is spelt (PyYAML reads 1e3 as a string), no fraction.
    assert load_config("synthetic", ["damsm.max_steps=1e3", "gan.max_steps=2000.0"]).gan.max_steps == 2000
    assert load_config("synthetic", ["damsm.max_steps=1e3"]).damsm.max_steps == 1000
    with pytest.raises(ConfigError, match=r"damsm.batch_size must be an integer, got '2.5e0'"):
        load_config("synthetic", ["damsm.batch_size=2.5e0"])
    # A path that looks like a number stays the string it is.
    assert load_config("synthetic", ["data.root=1e-3"]).data.root == "1e-3"


@pytest.mark.parametrize("override, message", [
    ("damsm.batch_size=0", "damsm.batch_size must be at least 1, got 0"),
    ("damsm.batch_size=-4", "damsm.batch_size must be at least 1, got -4"),
    ("runtime.seed=99999999999999999999999", "runtime.seed must be at most 9223372036854775807"),
    ("runtime.seed=-1", "runtime.seed must be at least 0, got -1"),
    ("gan.batch_size=1", "gan.batch_size must be at least 2, got 1"),
    ("data.words_num=0", "data.words_num must be at least 1, got 0"),
    ("data.captions_per_image=0", "data.captions_per_image must be at least 1, got 0"),
    ("data.workers=-1", "data.workers must be at least 0, got -1"),
    ("runtime.log_every=0", "runtime.log_every must be at least 1, got 0"),
    ("gan.stages=4", "gan.stages must be at most 3, got 4"),
    ("damsm.lr=0", "damsm.lr must be above 0, got 0.0"),
    ("damsm.max_steps=-1", "damsm.max_steps must be at least 0, got -1"),
    ("gan.ema_decay=5", "gan.ema_decay must be in [0, 1), got 5.0"),
    ("gan.ema_decay=1", "gan.ema_decay must be in [0, 1), got 1.0"),
    ("damsm.lr_decay=7", "damsm.lr_decay must be in [0, 1], got 7.0"),
    ("gan.betas=[2, 3]", "gan.betas must be two numbers in [0, 1) (Adam's), got [2.0, 3.0]"),
    ("damsm.betas=[0.5, .nan]", "damsm.betas must be two numbers in [0, 1)"),
    ("text_encoder.dropout=1.5", "text_encoder.dropout must be in [0, 1), got 1.5"),
    ("text_encoder.dropout=1", "text_encoder.dropout must be in [0, 1), got 1.0"),
    ("damsm.gamma1=inf", "damsm.gamma1 must be a finite number, got inf"),
    ("damsm.gamma1=100", "damsm.gamma1 must be at most 80, got 100.0"),
    ("gan.lambda_damsm=.inf", "gan.lambda_damsm must be a finite number, got inf"),
    ("gan.lr_g=nan", "gan.lr_g must be a finite number, got nan"),
    ("gan.base_size=12", "gan.base_size must be a power of two (8, 16, 32, 64, ...), got 12"),
    ("damsm=null", "--set damsm: damsm is a section of settings ("),
    ("gan=3", "--set gan: gan is a section of settings ("),
])
def test_values_out_of_range_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config("synthetic", [override])
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("text, message", [
    (b"damsm: {1: 2, foo: 3}\n", "unknown config keys 1, 'foo' in damsm"),  # keys of two types: sorted as text
    (b"damsm:\n  out_dir: caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 21)"),
    (b"damsm: 7\n", "damsm must be a mapping of keys to values, got 7"),
])
def test_bad_files_are_one_line_errors_also_under_overrides(tmp_path, text, message):
    """A probe's findings: a number as a key and a Latin-1 file were tracebacks; a section that is not a
    mapping was replaced, unseen, by the --set (or --out) that touched it."""
    path = tmp_path / "mine.yaml"
    path.write_bytes(text)
    for overrides in ([], ["damsm.max_steps=2"]):
        with pytest.raises(ConfigError) as caught:
            load_config(path, overrides)
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_setting_given_a_mapping_is_named_as_the_setting_it_is():
    # not "gan.batch_size must be a mapping": it is a number, given one by mistake
    with pytest.raises(ConfigError, match=r"gan.batch_size must be an integer, got \{'x': 1\}"):
        load_config("bird", ["gan.batch_size.x=1"])


def test_stored_configs_outside_todays_ranges_still_load():
    """A checkpoint's config is rebuilt through the same checks: a seed of 2^40 and a DAMSM batch of 1,
    accepted when it was trained, load (pretrain-damsm itself refuses a batch of 1)."""
    from attngan_fast.config import config_from_dict

    data = load_config("synthetic").to_dict()
    data["runtime"]["seed"], data["damsm"]["batch_size"] = 2**40, 1
    cfg = config_from_dict(data, strict=False)
    assert (cfg.runtime.seed, cfg.damsm.batch_size) == (2**40, 1)


def test_a_folder_or_a_broken_set_value_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config("synthetic", ["damsm.lr=[1"])
    assert "cannot parse value '[1'" in str(caught.value) and "\n" not in str(caught.value)
