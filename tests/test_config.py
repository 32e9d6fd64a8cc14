"""The typed configuration (job/config.py): defaults, preset, YAML, environment and command-line
precedence, type conversion, choices, validation, default Matryoshka dims and fingerprints.
Every test passes an explicit ``environ`` so the real environment never leaks in."""

from __future__ import annotations

import hashlib
from dataclasses import fields

import pytest
import yaml

from job.config import (
    FIELDS,
    PRESETS,
    JobConfig,
    coerce,
    default_dims,
    env_values,
    field_kind,
    fingerprint_digest,
    load_yaml,
    resolve_config,
)
from job.errors import JobError

ENV = "the environment (JOB_*)"
CLI = "the command line"


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(JobError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def _yaml(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults ---------------------------------------------------------------------------------------
def test_defaults():
    cfg = resolve_config(environ={})
    assert cfg == JobConfig()
    assert cfg.run_dir == "runs/default"
    assert cfg.model == "auto"
    assert cfg.data == "embedded"
    assert cfg.data_split == "train"
    assert cfg.matryoshka_dims is None
    assert cfg.max_seq_length is None
    assert cfg.question_column is None and cfg.passage_column is None
    assert cfg.check_column_order is True
    assert cfg.drop_invalid is False
    assert cfg.eval_data is None and cfg.eval_split == "test"
    assert (cfg.val_fraction, cfg.test_fraction, cfg.split_by, cfg.seed) == (0.1, 0.1, "pair", 42)
    assert cfg.preset is None
    assert (cfg.loss, cfg.mini_batch_size, cfg.epochs, cfg.max_steps) == ("mnrl", 32, 4.0, -1)
    assert (cfg.hard_negatives, cfg.hard_negative_margin, cfg.matryoshka_weights) == (1, 0.05, None)
    assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.learning_rate) == (32, 1, 1e-4)
    assert (cfg.warmup_ratio, cfg.lr_scheduler, cfg.weight_decay) == (0.1, "cosine", 0.0)
    assert (cfg.best_model_dim, cfg.eval_steps, cfg.eval_batch_size) == (None, None, 64)
    assert (cfg.save_total_limit, cfg.logging_steps, cfg.mixed_precision, cfg.dataloader_workers) == (2, 10, "auto", 0)


def test_to_dict_has_every_field():
    d = JobConfig().to_dict()
    assert list(d) == [f.name for f in fields(JobConfig)] == list(FIELDS)
    assert d["seed"] == 42 and d["matryoshka_dims"] is None


def test_field_kind():
    assert field_kind("matryoshka_dims") == (int, True, True)
    assert field_kind("epochs") == (float, False, False)
    assert field_kind("eval_steps") == (int, False, True)
    assert field_kind("check_column_order") == (bool, False, False)
    assert field_kind("query_prompt") == (str, False, True)


# --- precedence -------------------------------------------------------------------------------------
def test_precedence_defaults_yaml_env_cli(tmp_path):
    path = _yaml(tmp_path, "epochs: 2\nbatch_size: 16\nseed: 1\nwarmup_ratio: 0.2\n")
    environ = {"JOB_BATCH_SIZE": "8", "JOB_SEED": "2", "JOB_WEIGHT_DECAY": "0.01"}
    cfg = resolve_config(path, {"seed": 3, "logging_steps": 5}, environ)
    assert cfg.epochs == 2.0  # YAML over default
    assert cfg.warmup_ratio == 0.2  # YAML over default
    assert cfg.batch_size == 8  # environment over YAML
    assert cfg.weight_decay == 0.01  # environment over default
    assert cfg.seed == 3  # command line over environment and YAML
    assert cfg.logging_steps == 5  # command line over default
    assert cfg.learning_rate == 1e-4  # default untouched


def test_cli_none_values_do_not_override(tmp_path):
    path = _yaml(tmp_path, "epochs: 2\n")
    cfg = resolve_config(path, {"epochs": None, "seed": None}, {"JOB_SEED": "5"})
    assert (cfg.epochs, cfg.seed) == (2.0, 5)


def test_dashed_keys_in_yaml_and_cli(tmp_path):
    path = _yaml(tmp_path, "batch-size: 16\n")
    cfg = resolve_config(path, {"learning-rate": "3e-5"}, {})
    assert (cfg.batch_size, cfg.learning_rate) == (16, 3e-5)


def test_env_values_picks_known_job_variables_only():
    environ = {"JOB_EPOCHS": "2", "JOB_NOT_A_FIELD": "x", "HOME": "/root", "EPOCHS": "9", "JOB_seed": "7"}
    assert env_values(environ) == {"epochs": "2", "seed": "7"}


def test_a_misspelt_job_variable_is_a_warning_naming_the_field(caplog):
    from job import config

    config._WARNED_ENV.clear()
    env = {"JOB_EPOCH": "3", "JOB_LEARNINGRATE": "1e-5", "JOB_NAME": "nightly", "JOB_DEBUG": "1", "JOB_SEED": "7"}
    with caplog.at_level("WARNING", logger="job.config"):
        assert env_values(env) == {"seed": "7"}
        env_values(env)  # once per process
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "JOB_EPOCH is not a configuration variable and is ignored; did you mean JOB_EPOCHS?",
        "JOB_LEARNINGRATE is not a configuration variable and is ignored; did you mean JOB_LEARNING_RATE?",
    ]


def test_real_environment_is_ignored_with_explicit_environ(monkeypatch):
    monkeypatch.setenv("JOB_EPOCHS", "9")
    assert resolve_config(environ={}).epochs == 4.0
    assert resolve_config(environ={"JOB_EPOCHS": "3"}).epochs == 3.0


def test_empty_yaml_file_means_defaults(tmp_path):
    assert resolve_config(_yaml(tmp_path, ""), None, {}) == JobConfig()
    assert load_yaml(_yaml(tmp_path, "# only a comment\n", "c.yaml")) == {}


# --- presets ----------------------------------------------------------------------------------------
BLOG = {"loss": "mnrl", "batch_size": 32, "gradient_accumulation_steps": 16, "learning_rate": 2e-5, "epochs": 4.0,
        "warmup_ratio": 0.1, "lr_scheduler": "cosine", "hard_negatives": 0}  # fmt: skip


def test_preset_blog_values_applied():
    cfg = resolve_config(None, {"preset": "blog"}, {})
    assert PRESETS["blog"] == BLOG
    assert cfg.preset == "blog"
    assert {k: getattr(cfg, k) for k in BLOG} == BLOG
    assert cfg.seed == 42  # untouched by the preset


def test_preset_chosen_in_yaml_overridden_by_yaml_env_and_cli(tmp_path):
    path = _yaml(tmp_path, "preset: blog\nlearning_rate: 3.0e-5\n")
    cfg = resolve_config(path, {"epochs": "1"}, {"JOB_GRADIENT_ACCUMULATION_STEPS": "4"})
    assert cfg.learning_rate == 3e-5  # YAML beats the preset it names
    assert cfg.gradient_accumulation_steps == 4  # environment beats the preset
    assert cfg.epochs == 1.0  # command line beats the preset
    assert cfg.lr_scheduler == "cosine" and cfg.batch_size == 32  # preset values otherwise


def test_preset_chosen_on_cli_is_still_beneath_yaml_and_env(tmp_path):
    path = _yaml(tmp_path, "gradient_accumulation_steps: 2\n")
    cfg = resolve_config(path, {"preset": "blog"}, {"JOB_LEARNING_RATE": "5e-5"})
    assert cfg.gradient_accumulation_steps == 2  # YAML, although the preset came from a higher level
    assert cfg.learning_rate == 5e-5  # environment
    assert cfg.preset == "blog"


def test_preset_chosen_in_env():
    cfg = resolve_config(None, {"batch_size": 8}, {"JOB_PRESET": "blog"})
    assert (cfg.preset, cfg.learning_rate, cfg.gradient_accumulation_steps, cfg.batch_size) == ("blog", 2e-5, 16, 8)


def test_preset_set_at_higher_level_replaces_lower_one(tmp_path):
    path = _yaml(tmp_path, "preset: blog\n")
    cfg = resolve_config(path, {"preset": "none"}, {})
    assert cfg.preset is None
    assert (cfg.learning_rate, cfg.gradient_accumulation_steps) == (1e-4, 1)


def test_unknown_preset_lists_presets():
    assert _error(resolve_config, None, {"preset": "fast"}, {}) == (
        "Unknown preset 'fast'. Fix: use one of: blog (or no preset)."
    )


# --- YAML files -------------------------------------------------------------------------------------
def test_unknown_yaml_key_named(tmp_path):
    path = _yaml(tmp_path, "epochs: 2\nepoch: 3\n")
    msg = _error(resolve_config, path, None, {})
    assert msg.startswith(
        f"Unknown configuration key 'epoch' in config file {path}. Fix: did you mean 'epochs'? Else use one of: "
    )
    assert "batch_size, best_model_dim, " in msg
    assert msg.endswith(", weight_decay.")


def test_invalid_yaml_file(tmp_path):
    path = _yaml(tmp_path, "epochs: [1, 2\n")
    msg = _error(resolve_config, path, None, {})
    assert msg.startswith(f"Config file {path} is not valid YAML: ")
    assert msg.endswith("Fix: fix the YAML syntax.")


@pytest.mark.parametrize("text", ["- epochs\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_file(tmp_path, text):
    path = _yaml(tmp_path, text)
    assert _error(resolve_config, path, None, {}) == (
        f"Config file {path} must hold a mapping of option: value. Fix: see `job config` for the keys."
    )


def test_missing_yaml_file_and_directory(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert _error(load_yaml, missing) == (
        f"Config file {missing} does not exist or is not a file. Fix: pass the path of a YAML file to --config."
    )
    assert _error(load_yaml, tmp_path).startswith(f"Config file {tmp_path} does not exist or is not a file.")


def test_to_yaml_round_trips_through_resolve_config(tmp_path):
    cfg = resolve_config(None, {"preset": "blog", "matryoshka_dims": "256,128", "query_prompt": "query: "}, {})
    assert yaml.safe_load(cfg.to_yaml()) == cfg.to_dict()
    path = _yaml(tmp_path, cfg.to_yaml())
    assert resolve_config(path, None, {}) == cfg


# --- type conversion --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("epochs", "2", 2.0),
        ("epochs", "0.5", 0.5),
        ("learning_rate", "1e-4", 1e-4),
        ("learning_rate", "2E-5", 2e-5),
        ("batch_size", "64", 64),
        ("batch_size", 64.0, 64),
        ("batch_size", "1e3", 1000),
        ("max_steps", "-1", -1),
        ("check_column_order", "true", True),
        ("check_column_order", "0", False),
        ("check_column_order", " Yes ", True),
        ("check_column_order", "off", False),
        ("drop_invalid", 1, True),
        ("drop_invalid", False, False),
        ("matryoshka_dims", "384,256", [384, 256]),
        ("matryoshka_dims", "384, 256, 64", [384, 256, 64]),
        ("matryoshka_dims", "512,", [512]),
        ("matryoshka_dims", [768, "512"], [768, 512]),
        ("matryoshka_dims", 128, [128]),
        ("matryoshka_dims", "none", None),
        ("matryoshka_dims", "", None),
        ("eval_steps", "None", None),
        ("eval_steps", "null", None),
        ("eval_steps", "50", 50),
        ("query_prompt", "query: ", "query: "),
        ("query_prompt", None, None),
        ("model", 123, "123"),
        ("loss", "cached_mnrl", "cached_mnrl"),
        ("split_by", "passage", "passage"),
    ],
)
def test_coerce(name, value, expected):
    out = coerce(name, value, "test")
    assert out == expected
    assert type(out) is type(expected)


def test_env_strings_converted_to_types():
    environ = {
        "JOB_EPOCHS": "1.5",
        "JOB_LEARNING_RATE": "1e-4",
        "JOB_BATCH_SIZE": "16",
        "JOB_CHECK_COLUMN_ORDER": "false",
        "JOB_DROP_INVALID": "1",
        "JOB_MATRYOSHKA_DIMS": "384,256,128",
        "JOB_MAX_SEQ_LENGTH": "none",
        "JOB_EVAL_STEPS": "100",
    }
    cfg = resolve_config(None, None, environ)
    assert (cfg.epochs, cfg.learning_rate, cfg.batch_size) == (1.5, 1e-4, 16)
    assert (cfg.check_column_order, cfg.drop_invalid) == (False, True)
    assert cfg.matryoshka_dims == [384, 256, 128]
    assert (cfg.max_seq_length, cfg.eval_steps) == (None, 100)


def test_bad_type_from_environment_names_field_and_source():
    assert _error(resolve_config, None, None, {"JOB_EPOCHS": "abc"}) == (
        f"'epochs' from {ENV} has the value 'abc', which is not a valid float. Fix: give a float."
    )


def test_bad_type_from_yaml_names_field_and_file(tmp_path):
    path = _yaml(tmp_path, "epochs: abc\n")
    assert _error(resolve_config, path, None, {}) == (
        f"'epochs' from config file {path} has the value 'abc', which is not a valid float. Fix: give a float."
    )


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("batch_size", "2.5", "int"),
        ("batch_size", 2.5, "int"),
        ("batch_size", "eight", "int"),
        ("check_column_order", "maybe", "bool"),
        ("matryoshka_dims", "384,abc", "comma-separated list of int"),
    ],
)
def test_bad_type_from_cli(name, value, kind):
    assert _error(resolve_config, None, {name: value}, {}) == (
        f"'{name}' from {CLI} has the value {value!r}, which is not a valid {kind}. Fix: give a {kind}."
    )


def test_non_optional_field_must_not_be_empty(tmp_path):
    path = _yaml(tmp_path, "data: null\n")
    assert (
        _error(resolve_config, path, None, {})
        == f"'data' from config file {path} must not be empty. Fix: give a str value."
    )


def test_unknown_key_from_cli():
    msg = _error(resolve_config, None, {"epoch": "2"}, {})
    assert msg.startswith(f"Unknown configuration key 'epoch' in {CLI}.")


@pytest.mark.parametrize("value", ["1.5e0", "1e-4"])
def test_int_field_rejects_non_integral_scientific_notation(value):
    assert "which is not a valid int" in _error(coerce, "batch_size", value, CLI)


# --- choices ----------------------------------------------------------------------------------------
def test_loss_choices():
    assert resolve_config(None, {"loss": "cached_mnrl"}, {}).loss == "cached_mnrl"
    assert _error(resolve_config, None, {"loss": "triplet"}, {}) == (
        f"'loss' from {CLI} is 'triplet'. Fix: use one of: mnrl, cached_mnrl, gist, cached_gist."
    )


def test_choices_are_case_sensitive_and_checked_for_env():
    assert _error(resolve_config, None, None, {"JOB_LOSS": "MNRL"}) == (
        f"'loss' from {ENV} is 'MNRL'. Fix: use one of: mnrl, cached_mnrl, gist, cached_gist."
    )
    assert _error(resolve_config, None, {"split_by": "question"}, {}) == (
        f"'split_by' from {CLI} is 'question'. Fix: use one of: pair, passage."
    )
    assert _error(resolve_config, None, {"mixed_precision": "fp8"}, {}) == (
        f"'mixed_precision' from {CLI} is 'fp8'. Fix: use one of: auto, no, fp16, bf16."
    )


# --- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -4])
def test_batch_size_must_be_positive(value):
    assert _error(resolve_config, None, {"batch_size": value}, {}) == (
        f"batch_size is {value}; it must be at least 1. Fix: pass a positive --batch-size."
    )


@pytest.mark.parametrize(("negatives", "depth"), [(1, 1), (3, 2)])
def test_hard_negative_depth_must_exceed_the_negatives(negatives, depth):
    message = _error(resolve_config, None, {"hard_negatives": negatives, "hard_negative_depth": depth}, {})
    assert message.startswith(f"hard_negative_depth is {depth}; mining {negatives} negative(s) per pair")
    assert "Fix: pass e.g. --hard-negative-depth" in message
    assert resolve_config(cli={"hard_negative_depth": 50}, environ={}).hard_negative_depth == 50


@pytest.mark.parametrize("name", ["gradient_accumulation_steps", "mini_batch_size", "eval_batch_size", "logging_steps"])
def test_other_positive_ints(name):
    assert _error(resolve_config, None, {name: 0}, {}) == (
        f"{name} is 0; it must be at least 1. Fix: pass a positive --{name.replace('_', '-')}."
    )


@pytest.mark.parametrize(("val", "test", "shown"), [(0.5, 0.5, "1"), (0.6, 0.5, "1.1"), (0.9, 0.1, "1")])
def test_fractions_must_leave_training_data(val, test, shown):
    assert _error(resolve_config, None, {"val_fraction": val, "test_fraction": test}, {}) == (
        f"val_fraction + test_fraction = {shown} leaves no training data. "
        "Fix: lower them so that their sum is below 1 (e.g. 0.1 and 0.1)."
    )


def test_fractions_just_below_one_accepted():
    cfg = resolve_config(None, {"val_fraction": 0.45, "test_fraction": 0.45}, {})
    assert (cfg.val_fraction, cfg.test_fraction) == (0.45, 0.45)
    assert resolve_config(None, {"val_fraction": 0, "test_fraction": 0}, {}).val_fraction == 0.0


@pytest.mark.parametrize(("name", "value"), [("val_fraction", 1.0), ("test_fraction", -0.1)])
def test_fraction_out_of_range(name, value):
    assert _error(resolve_config, None, {name: value}, {}) == (
        f"{name} is {value}; it must be in [0, 1). Fix: pass e.g. --{name.replace('_', '-')} 0.1."
    )


def test_repeated_dims():
    assert _error(resolve_config, None, {"matryoshka_dims": "256,128,256"}, {}) == (
        "matryoshka_dims [256, 128, 256] repeats a dim. Fix: list each dim once."
    )


@pytest.mark.parametrize(("value", "shown"), [("256,0", "[256, 0]"), ("64,-32", "[64, -32]"), (",", "[]")])
def test_dims_must_be_positive(value, shown):
    assert _error(resolve_config, None, {"matryoshka_dims": value}, {}) == (
        f"matryoshka_dims {shown} must be positive integers. Fix: pass e.g. 384,256,128,64,32."
    )


def test_other_validation_messages():
    assert _error(resolve_config, None, {"eval_steps": 0}, {}) == (
        "eval_steps is 0; it must be at least 1. Fix: pass a positive --eval-steps or leave it unset."
    )
    assert _error(resolve_config, None, {"epochs": 0}, {}) == (
        "epochs is 0.0; it must be positive. Fix: pass --epochs > 0 or --max-steps > 0."
    )
    assert _error(resolve_config, None, {"learning_rate": "0"}, {}) == (
        "learning_rate is 0.0; it must be positive. Fix: pass e.g. --learning-rate 1e-4."
    )
    assert _error(resolve_config, None, {"warmup_ratio": 1}, {}) == (
        "warmup_ratio is 1.0; it must be in [0, 1). Fix: pass e.g. --warmup-ratio 0.1."
    )


def test_zero_epochs_allowed_with_max_steps():
    cfg = resolve_config(None, {"epochs": 0, "max_steps": 10}, {})
    assert (cfg.epochs, cfg.max_steps) == (0.0, 10)


def test_nan_learning_rate_rejected():
    assert "learning_rate" in _error(resolve_config, None, {"learning_rate": "nan"}, {})


# --- default dims -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_dim", "expected"),
    [
        (768, [768, 512, 256, 128, 64]),
        (384, [384, 256, 128, 64, 32]),
        (1024, [1024, 768, 512, 256, 128, 64]),
        (512, [512, 256, 128, 64, 32]),  # halvings down to max(8, 512 // 16) = 32
        (256, [256, 128, 64, 32, 16]),  # down to 16
        (100, [100, 64, 32, 16, 8]),  # starts at the power of two below 100; floor 8
        (1536, [1536, 1024, 512, 256, 128]),  # floor 1536 // 16 = 96
        (4096, [4096, 2048, 1024, 512, 256]),
        (8, [8]),  # 4 is below the floor 8
    ],
)
def test_default_dims(model_dim, expected):
    assert default_dims(model_dim) == expected


def test_default_dims_odd_and_large():
    assert default_dims(130) == [130, 128, 64, 32, 16, 8]  # six entries: the most the loop allows
    assert default_dims(1 << 20) == [1 << 20, 1 << 19, 1 << 18, 1 << 17, 1 << 16]  # floor (1 << 20) // 16
    assert default_dims(3000) == [3000, 2048, 1024, 512, 256]


# --- fingerprints -----------------------------------------------------------------------------------
def test_fingerprint_selects_sorted_names():
    cfg = resolve_config(None, {"seed": 7}, {})
    fp = cfg.fingerprint(["seed", "epochs", "data"])
    assert fp == {"data": "embedded", "epochs": 4.0, "seed": 7}
    assert list(fp) == ["data", "epochs", "seed"]
    assert cfg.fingerprint(iter({"matryoshka_dims"})) == {"matryoshka_dims": None}
    assert cfg.fingerprint([]) == {}


def test_fingerprint_unknown_name_raises_key_error():
    with pytest.raises(KeyError):
        JobConfig().fingerprint(["nope"])


def test_fingerprint_digest():
    expected = hashlib.sha256(b'{"epochs": 4.0, "seed": 42}').hexdigest()[:16]
    assert fingerprint_digest({"seed": 42, "epochs": 4.0}) == expected
    assert fingerprint_digest({"epochs": 4.0, "seed": 42}) == expected
    assert len(expected) == 16
    assert fingerprint_digest({"epochs": 4.0, "seed": 43}) != expected
    assert fingerprint_digest(JobConfig().fingerprint(["epochs", "seed"])) == expected


# --- Matryoshka weights -----------------------------------------------------------------------------
def test_matryoshka_weights_parse_and_validate():
    cfg = resolve_config(None, {"matryoshka_weights": "1,1,1,2,2"}, {})
    assert cfg.matryoshka_weights == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert _error(resolve_config, None, {"matryoshka_weights": "1,0"}, {}) == (
        "matryoshka_weights [1.0, 0.0] must be positive numbers. Fix: pass e.g. 1,1,1,2,2."
    )
    assert _error(resolve_config, None, {"matryoshka_dims": "64,32", "matryoshka_weights": "1,1,2"}, {}) == (
        "matryoshka_weights has 3 values for 2 matryoshka_dims. "
        "Fix: give one weight per dim, in the same order (largest dim first)."
    )


def test_records_from_before_a_field_existed_still_match():
    from job.config import TRAIN_FIELDS, fingerprints_match

    cfg = resolve_config(None, {}, {})
    now = cfg.fingerprint(TRAIN_FIELDS)
    before = {k: v for k, v in now.items() if k not in ("length_grouping", "loss_directions", "loss_scale")}
    assert fingerprints_match(before, now)  # those fields at the values runs had before they existed
    changed = resolve_config(None, {"length_grouping": "16"}, {}).fingerprint(TRAIN_FIELDS)
    assert not fingerprints_match(before, changed)  # a run made without grouping is not a grouped run
    assert not fingerprints_match({**before, "epochs": 2.0}, now)


def test_gpu_bench_variants_are_valid_configurations():
    """scripts/gpu_bench.sh runs once on a lent GPU: a variant with a misspelt setting would waste that run."""
    import re
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    from quality import parse_settings

    script = (root / "scripts" / "gpu_bench.sh").read_text()
    variants = re.search(r'VARIANTS=\$\{VARIANTS-"([^"]*)"', script).group(1).split()
    assert len(variants) >= 5
    for spec in variants:
        name, _, settings = spec.partition(":")
        assert name and settings, spec
        resolve_config(cli=parse_settings(settings), environ={})


def test_a_fields_constraint_section_and_legacy_value_live_beside_it():
    """Each field carries its own check, --help section and legacy value (in its _opt): the tables every reader
    uses are derived from the fields, so a new field is one declaration."""
    from job import config

    meta = config.FIELDS["batch_size"].metadata
    assert meta["check"].want == "at least 1" and not meta["check"].ok(0) and meta["check"].ok(1)
    assert config.FIELDS["merge_base"].metadata["section"] == config.help_section("merge_base")
    assert config.LEGACY_VALUES == {n: f.metadata["legacy"] for n, f in config.FIELDS.items() if "legacy" in f.metadata}
    assert config.LEGACY_VALUES["guide_model"] is None and config.LEGACY_VALUES["merge_base"] == "off"
    checked = [n for n, f in config.FIELDS.items() if "check" in f.metadata]
    assert len(checked) >= 30
    for name in checked:  # every check's fix names the field's own flag
        assert "{flag}" in config.FIELDS[name].metadata["check"].fix, name


def test_validation_never_changes_the_configuration_and_it_is_frozen():
    import dataclasses

    from job.config import JobConfig, validate_config

    cfg = resolve_config(cli={"merge_base": " AUTO "}, environ={})
    assert cfg.merge_base == "auto"  # normalised when read (coerce), not by the validation
    assert resolve_config(cli={"merge_base": ".5"}, environ={}).merge_base == "0.5"
    before = cfg.to_dict()
    validate_config(cfg)
    assert cfg.to_dict() == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3.0  # type: ignore[misc]
    with pytest.raises(JobError, match="merge_base is 'AUTO'; it must be off, auto, or an alpha"):
        validate_config(JobConfig(merge_base="AUTO"))  # built in code: given as every reader compares it, or refused
    changed = dataclasses.replace(cfg, epochs=3.0)
    assert changed.epochs == 3.0 and cfg.epochs != 3.0


def test_a_range_check_without_an_example_or_a_fix_is_refused_where_it_is_declared():
    from job.config import at_least

    with pytest.raises(TypeError, match="example value or a fix"):
        at_least(1)
    assert "pass e.g. {flag} 4." == at_least(1, "4").fix and at_least(1, fix="drop it.").fix == "drop it."
