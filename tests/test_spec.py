"""The experiment spec: TOML -> schema validation -> frozen dataclasses, overrides, hashes, error messages."""

from __future__ import annotations

import dataclasses
import json

import pytest

from voxelbase.spec import (
    ExperimentSpec,
    SpecError,
    TrainSpec,
    experiment_schema,
    load_spec,
    parse_spec,
    spec_from_dict,
)
from voxelbase.spec.model import SECTIONS
from voxelbase.training.augment import AugmentConfig

MINIMAL = 'name = "synth-baseline"\ndataset = "synth"\n'

FULL = """
name = "synth-baseline"
dataset = "synth"
[ingest]
source = "raw/Dataset001_synth"
[plan]
preset = "resenc-m"
gpu_memory_gb = 24
[preprocess]
workers = 2
[train]
configurations = ["3d_fullres", "2d"]
folds = [0, 1]
epochs = 50
iterations_per_epoch = 10
initial_lr = 0.02
device = "cuda:1"
patch_size = [32, 64, 64]
channels_last = true
[augment]
p_rotation = 0.5
scaling = [0.8, 1.2]
mirror_axes = [1, 2]
[predict]
tta = false
batch_windows = 8
[evaluate]
nsd_tolerance_mm = 2
"""


def errors_of(text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, overrides=overrides)
    return list(info.value.errors)


def test_minimal_spec_gets_nnunet_defaults():
    spec = parse_spec(MINIMAL)
    t = spec.train
    assert (spec.name, spec.dataset, spec.ingest) == ("synth-baseline", "synth", None)
    assert t.configurations == ("3d_fullres",) and t.folds == (0, 1, 2, 3, 4)
    assert (t.epochs, t.iterations_per_epoch, t.val_iterations) == (1000, 250, 50)
    assert (t.initial_lr, t.weight_decay, t.momentum, t.nesterov, t.poly_exponent) == (0.01, 3e-5, 0.99, True, 0.9)
    assert (t.oversample_foreground, t.seed, t.device, t.grad_clip) == (0.33, 12345, "auto", 12.0)
    assert (t.batch_size, t.patch_size, t.batch_dice) == (None, None, None)
    assert (t.deep_supervision, t.checkpoint_every, t.ema_pseudo_dice, t.compile) == (True, 50, 0.9, False)
    assert spec.augment == AugmentConfig()
    assert spec.plan.preset == "nnunet" and spec.plan.gpu_memory_gb == 8.0
    assert spec.evaluate.nsd_tolerance_mm == 1.0 and spec.predict.tta is True


def test_full_spec_parses_into_typed_frozen_objects(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(FULL)
    spec = load_spec(path)
    assert spec.plan.preset == "resenc-m" and spec.plan.gpu_memory_gb == 24.0
    assert isinstance(spec.plan.gpu_memory_gb, float)  # TOML integer in a number field
    assert spec.train.configurations == ("3d_fullres", "2d") and spec.train.folds == (0, 1)
    assert spec.train.patch_size == (32, 64, 64) and spec.train.channels_last is True
    assert spec.augment.scaling == (0.8, 1.2) and spec.augment.mirror_axes == (1, 2)
    assert spec.augment.p_rotation == 0.5 and spec.augment.p_scaling == 0.2
    assert spec.predict.batch_windows == 8 and spec.evaluate.nsd_tolerance_mm == 2.0
    assert spec.preprocess.workers == 2
    assert spec.ingest_source() == tmp_path / "raw" / "Dataset001_synth"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.epochs = 3  # type: ignore[misc]


def test_wrong_type_names_the_key_path():
    assert errors_of(MINIMAL + '[train]\nepochs = "abc"\n') == ["train.epochs: 'abc' is not of type 'integer'"]
    assert errors_of(MINIMAL + "[train]\ndeep_supervision = 1\n") == [
        "train.deep_supervision: 1 is not of type 'boolean'"
    ]
    assert errors_of(MINIMAL + "[augment]\nscaling = 0.7\n") == ["augment.scaling: 0.7 is not of type 'array'"]


def test_unknown_key_names_the_key_path_and_suggests():
    assert errors_of(MINIMAL + "[train]\nepoch = 3\n") == ["unknown key 'train.epoch' (did you mean 'train.epochs'?)"]
    assert errors_of(MINIMAL + "[augment]\nfoo_bar = 3\n") == ["unknown key 'augment.foo_bar'"]
    assert errors_of(MINIMAL + "[training]\nepochs = 3\n")[0].startswith("unknown key 'training'")


def test_out_of_range_and_enum_values():
    errs = errors_of(
        MINIMAL + '[plan]\npreset = "big"\n[train]\nepochs = 0\noversample_foreground = 1.5\ndevice = "gpu"\n'
        'folds = [0, "x"]\n[augment]\np_mirror = -0.1\nmirror_axes = [3]\n'
    )
    assert "plan.preset: 'big' is not one of ['nnunet', 'resenc-m', 'resenc-l', 'resenc-xl']" in errs
    assert "train.epochs: 0 is less than the minimum of 1" in errs
    assert "train.oversample_foreground: 1.5 is greater than the maximum of 1" in errs
    assert any(e.startswith("train.device: 'gpu' does not match") and "cuda:N" in e for e in errs)
    assert any(e.startswith("train.folds[1]: 'x' is not valid") for e in errs)
    assert "augment.p_mirror: -0.1 is less than the minimum of 0" in errs
    assert any(e.startswith("augment.mirror_axes[0]: 3 is not one of") for e in errs)
    assert len(errs) == 7  # every problem at once, not just the first


def test_missing_required_and_cross_field_errors():
    assert errors_of('name = "x"\n') == ["missing required key 'dataset'"]
    assert errors_of(MINIMAL + "[ingest]\nreplace = true\n") == ["missing required key 'ingest.source'"]
    assert errors_of(MINIMAL + "[augment]\nscaling = [1.4, 0.7]\n") == [
        "augment.scaling: lower bound 1.4 exceeds upper bound 0.7"
    ]
    assert errors_of('name = "../evil"\ndataset = "d"\n')[0].startswith("name: '../evil' does not match")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(SpecError, match="not valid TOML") as info:
        load_spec(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")


def test_overrides_set_any_key_with_the_same_validation(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(MINIMAL + "[train]\nepochs = 1000\n")
    spec = load_spec(
        path,
        overrides=[
            "train.epochs=50",
            "train.folds=all",
            "train.configurations=2d",
            "train.initial_lr=1e-3",
            "train.device=cuda:0",
            "train.batch_size=4",
            "train.patch_size=[16, 32, 32]",
            "train.compile=true",
            "augment.p_rotation=0.5",
            "augment.scaling=[0.9, 1.1]",
            "plan.gpu_memory_gb=24",
            "predict.tta=false",
            'description="a \\"quoted\\" run"',
        ],
    )
    t = spec.train
    assert (t.epochs, t.folds, t.configurations, t.initial_lr, t.device) == (50, ("all",), ("2d",), 1e-3, "cuda:0")
    assert (t.batch_size, t.patch_size, t.compile) == (4, (16, 32, 32), True)
    assert spec.augment.p_rotation == 0.5 and spec.augment.scaling == (0.9, 1.1)
    assert spec.plan.gpu_memory_gb == 24.0 and spec.predict.tta is False
    assert spec.description == 'a "quoted" run'
    assert load_spec(path, overrides=["train.folds=3"]).train.folds == (3,)
    assert load_spec(path, overrides=["train.batch_size=null"]).train.batch_size is None

    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=["train.epochs=abc"])
    assert info.value.errors == ("train.epochs: 'abc' is not of type 'integer' (from --set)",)
    assert str(path) in str(info.value)
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=["train.epoch=3"])
    assert info.value.errors == ("unknown key 'train.epoch' (did you mean 'train.epochs'?)",)
    with pytest.raises(SpecError, match="train.epochs: -1 is less than the minimum of 1"):
        load_spec(path, overrides=["train.epochs=-1"])
    with pytest.raises(SpecError, match="not of the form key.path=value"):
        load_spec(path, overrides=["train.epochs"])
    with pytest.raises(SpecError, match="'train.epochs' is a value, not a table"):
        load_spec(path, overrides=["train.epochs.x=1"])


def test_resolved_dict_round_trips_and_hashes_are_stable():
    spec = parse_spec(FULL)
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["train"]["epochs"] == 50 and data["augment"]["scaling"] == [0.8, 1.2]
    assert spec_from_dict(data) == spec
    assert spec_from_dict(data).hash() == spec.hash()
    # defaults written out or left implicit: same resolved spec, same hash
    explicit = parse_spec(MINIMAL + "[train]\nepochs = 1000\nseed = 12345\n[plan]\ngpu_memory_gb = 8.0\n")
    assert explicit.hash() == parse_spec(MINIMAL).hash()
    assert len(spec.hash()) == 64 and spec.hash() == parse_spec(FULL).hash()
    changed = parse_spec(FULL, overrides=["train.epochs=51"])
    assert changed.hash() != spec.hash()
    assert changed.section_hash("train") != spec.section_hash("train")
    for name in ("plan", "augment", "predict", "evaluate", "ingest", "preprocess"):
        assert changed.section_hash(name) == spec.section_hash(name)
    assert parse_spec(MINIMAL).section_hash("ingest") != spec.section_hash("ingest")
    with pytest.raises(KeyError, match="unknown spec section"):
        spec.section_hash("training")


def test_schema_defaults_equal_dataclass_defaults():
    """The schema documents the defaults; the dataclasses apply them. They must not drift apart."""
    props = experiment_schema()["properties"]
    assert props["train"]["additionalProperties"] is False
    for name, cls in SECTIONS.items():
        section_props = props[name]["properties"]
        field_names = [f.name for f in dataclasses.fields(cls)]
        assert sorted(section_props) == sorted(field_names), name
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:
                continue
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            assert section_props[f.name]["default"] == default, f"{name}.{f.name}"


def test_every_object_in_the_schema_forbids_unknown_keys():
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node.get("additionalProperties") is False, node.get("description")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(experiment_schema())


def test_spec_is_constructible_without_files():
    spec = ExperimentSpec(name="x", dataset="d", train=TrainSpec(epochs=3))
    assert spec.to_dict()["train"]["epochs"] == 3 and "ingest" not in spec.to_dict()
