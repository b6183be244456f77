import re

import pytest
import yaml
from conftest import DATA

from galparam.errors import SpecError
from galparam.geometry import Geometry
from galparam.specs import experiment_from_dict, load_spec, search_from_dict, spec_from_dict

SHIPPED = [
    "v1",
    "v2",
    "v3",
    "test_snr30",
    "test_snr60",
    "v1-small",
    "v2-small",
    "v3-small",
    "test_snr30-small",
    "test_snr60-small",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_load(name):
    spec = load_spec(DATA / f"{name}.yaml")
    assert spec.geometry == Geometry(stamp_size=64, pixel_scale=0.23, psf_beta=2.0)


def test_reference_datasets_as_in_design():
    v1, v2, v3 = (load_spec(DATA / f"{v}.yaml") for v in ("v1", "v2", "v3"))
    assert v1.size == v2.size == v3.size == 200_000
    assert v1.snr_window == (10.0, 100.0) and v1.validation_fraction == 0.1
    assert v1.priors["flux"].low == 3.0e4 and v1.priors["flux"].high == 4.0e5
    assert v1.priors["sersic_n"].kind == "discretized" and v1.priors["sersic_n"].steps == 1000
    assert (v1.priors["sigma"].kind, v1.priors["sigma"].low) == ("fixed", 200)
    assert (v2.priors["sigma"].kind, v2.priors["sigma"].low, v2.priors["sigma"].high) == ("integers", 200, 400)
    assert not v2.psf_varies and v3.psf_varies
    assert (v3.priors["psf_fwhm"].low, v3.priors["psf_fwhm"].high) == (0.5, 1.0)
    for snr, sigma in ((30, 400), (60, 200)):
        t = load_spec(DATA / f"test_snr{snr}.yaml")
        assert t.size == 10_000 and t.snr_window is None
        values = {k: p.low for k, p in t.priors.items() if p.is_fixed}
        assert values == {
            "flux": 1e5,
            "sersic_n": 3.0,
            "hlr": 0.3,
            "g1": -0.069,
            "g2": 0.15,
            "psf_fwhm": 0.5,
            "sigma": sigma,
        }


@pytest.mark.parametrize(
    "change, words",
    [
        ({"colour": "red"}, ["unknown key 'colour'", "accepted keys"]),
        ({"size": "many"}, ["size", "'many'", "not an integer"]),
        ({"size": 0}, ["size", "0", "outside [1,"]),
        ({"seed": -1}, ["seed", "-1"]),
        ({"validation_fraction": 1.0}, ["validation_fraction", "[0, 1)"]),
        ({"snr_window": [100, 10]}, ["snr_window", "[100, 10]"]),
        ({"poisson_noise": "yes"}, ["poisson_noise", "true or false"]),
        ({"priors": {"sersic_n": {"uniform": [0.1, 3.0]}}}, ["priors.sersic_n", "0.1", "[0.3, 6.2]"]),
        ({"priors": {"sersic_n": {"fixed": 6.5}}}, ["priors.sersic_n", "6.5", "[0.3, 6.2]"]),
        ({"priors": {"hlr": {"uniform": [0.6, 0.1]}}}, ["priors.hlr", "inverted", "low < high"]),
        ({"priors": {"flux": {"normal": [1, 2]}}}, ["priors.flux", "'normal'", "{uniform: ...}"]),
        ({"priors": {"flux": {"uniform": [1.0]}}}, ["priors.flux", "[low, high]"]),
        ({"priors": {"sigma": {"integers": [200.5, 400]}}}, ["priors.sigma", "whole numbers"]),
        ({"priors": {"hlr": {"discretized": [0.1, 0.6]}}}, ["priors.hlr", "'discretized'"]),
        ({"priors": {"g1": {"fixed": 0.1}}}, ["shear", "one pair"]),
        ({"priors": {"psf_fwhm": None}}, ["missing 'psf_fwhm'"]),
        ({"priors": {"sersic_nn": {"fixed": 1.0}}}, ["unknown parameter 'sersic_nn'"]),
    ],
)
def test_spec_errors_name_key_value_and_range(base_spec_dict, change, words):
    raw = base_spec_dict
    priors = change.pop("priors", {}) if "priors" in change else {}
    raw.update(change)
    for k, v in priors.items():
        if v is None:
            raw["priors"].pop(k)
        else:
            raw["priors"][k] = v
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw, source="my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: ") and "\n" not in message
    for word in words:
        assert word in message


def test_g1_g2_box_must_stay_inside_unit_circle(base_spec_dict):
    raw = base_spec_dict
    del raw["priors"]["shear_amplitude"], raw["priors"]["shear_angle"]
    raw["priors"]["g1"] = {"uniform": [-0.8, 0.8]}
    raw["priors"]["g2"] = {"uniform": [-0.8, 0.8]}
    with pytest.raises(SpecError, match="below 1"):
        spec_from_dict(raw, source="s.yaml")


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [1, 2\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(bad)


def test_yaml_exponent_without_sign_is_a_number(base_spec_dict):
    base_spec_dict["priors"]["flux"] = {"uniform": ["3.0e4", "4.0e5"]}
    spec = spec_from_dict(base_spec_dict)
    assert spec.priors["flux"].low == 3.0e4


def test_overrides_and_digest(spec_factory):
    spec = spec_factory()
    bigger = spec.with_overrides(size=99)
    assert bigger.size == 99 and bigger.seed == spec.seed
    assert bigger.digest() != spec.digest() and spec_factory().digest() == spec.digest()
    with pytest.raises(SpecError, match="size"):
        spec.with_overrides(size=0)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"stages": ["joint"]}, "stages: applies to the autoencoder family, not to xception"),
        ({"loss_weights": [1, 1]}, "loss_weights: applies to the joint denoiser and Xception (joint: true)"),
        ({"loss": "binary_crossentropy"}, "binary_crossentropy needs [0, 1] targets"),
        ({"loss": "hinge"}, "loss: 'hinge' is not accepted; accepted: binary_crossentropy, mse, mae, huber"),
        ({"optimizer": "adagrad"}, "accepted: adam, adamw, rmsprop, sgd"),
        ({"learning_rate": 0}, "learning_rate: 0.0 is outside (0, 1]"),
        ({"psf_input": "yes"}, "psf_input: 'yes' is not accepted; accepted: auto, true, false"),
    ],
)
def test_experiment_errors_name_key_value_and_what_is_accepted(changes, words):
    raw = {"name": "e", "family": "xception", "dataset": "d.npz", **changes}
    with pytest.raises(SpecError, match=re.escape(words)):
        experiment_from_dict(raw, source="e.yaml")


def test_experiment_loss_defaults_to_the_familys_and_resolved_specs_load_again():
    xception = experiment_from_dict({"name": "e", "family": "xception", "dataset": "d.npz"})
    autoencoder = experiment_from_dict({"name": "e", "family": "autoencoder", "dataset": "d.npz", "loss": None})
    assert xception.loss == "mse" and autoencoder.loss == "binary_crossentropy"
    for spec in (xception, autoencoder):  # what a run folder records is a valid spec of the same experiment
        assert experiment_from_dict(yaml.safe_load(spec.to_yaml())) == spec


def test_search_spec_keys_are_declared_and_checked():
    base = {"name": "s", "family": "xception", "dataset": "d.npz"}
    spec = search_from_dict({"search": "tune", **base})
    assert (spec.tuner, spec.max_trials, spec.block_types) == ("bayesian", 10, ("vanilla", "resnet", "xception"))
    assert search_from_dict({"search": "autokeras", **base}).tuner == "greedy"
    for raw, words in (
        ({"search": "tune", "max_trials": 0, **base}, "max_trials: 0 is outside [1, 1e+06]"),
        ({"search": "anneal", **base}, "search: 'anneal' is not accepted; accepted: grid, tune, autokeras"),
        ({"search": "tune", "grid": {"a": [1]}, **base}, "grid: only a grid search takes a grid"),
        ({"search": "tune", "block_types": ["efficientnet"], **base}, "block_types: ['efficientnet']"),
        ({"search": "tune", "epochz": 1, **base}, "unknown key 'epochz'"),
    ):
        with pytest.raises(SpecError, match=re.escape(words)):
            search_from_dict(raw, source="s.yaml")


def test_a_spec_extends_another_and_resolves_to_the_same_spec_as_written_in_full(tmp_path):
    """``base:``: keys override, a mapping merges one level down (null removes an entry), a base's
    relative paths stay its own folder's, and the resolved spec is what the full file would give."""
    from galparam.specs import load_experiment

    (tmp_path / "bases").mkdir()
    full = {
        "name": "child",
        "family": "xception",
        "dataset": "../data/v2.npz",
        "hyperparameters": {"conv2d_num_filters": 16, "sep_num_filters": 64, "num_residual_blocks": 2},
        "epochs": 3,
        "seed": 4,
    }
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "full.yaml").write_text(yaml.safe_dump(full))
    parent = {**full, "name": "parent", "dataset": "../data/v2.npz", "epochs": 100}
    parent["hyperparameters"] = {**full["hyperparameters"], "num_residual_blocks": 8, "kernel_size": 3}
    (tmp_path / "experiments" / "parent.yaml").write_text(yaml.safe_dump(parent))
    child = "base: parent.yaml\nname: child\nepochs: 3\nhyperparameters: {num_residual_blocks: 2, kernel_size: null}\n"
    (tmp_path / "experiments" / "child.yaml").write_text(child)
    # a grandchild in another folder: its own paths are its folder's, the chain's are theirs
    (tmp_path / "bases" / "grandchild.yaml").write_text("base: ../experiments/child.yaml\nseed: 5\n")
    resolved = load_experiment(tmp_path / "experiments" / "child.yaml")
    assert resolved.to_yaml() == load_experiment(tmp_path / "experiments" / "full.yaml").to_yaml()
    grandchild = load_experiment(tmp_path / "bases" / "grandchild.yaml")
    assert grandchild.dataset == (tmp_path / "data" / "v2.npz").resolve() and grandchild.seed == 5
    assert "base" not in grandchild.to_yaml()  # a run records the resolved spec, never the chain


@pytest.mark.parametrize(
    "files, words",
    [
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "a cycle of bases"),
        ({"a.yaml": "base: a.yaml\n"}, "a cycle of bases"),
        ({"a.yaml": "base: 3\n"}, "base: 3 is not a spec file (.yaml) to extend"),
        ({"a.yaml": "base: missing.yaml\n"}, "missing.yaml: no such spec file"),
    ],
)
def test_a_bad_base_is_one_error_naming_the_file(tmp_path, files, words):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SpecError, match=re.escape(words)):
        load_spec(tmp_path / "a.yaml")


def test_shipped_variants_extend_their_full_scale_spec_in_a_few_lines():
    """The reference architecture lives in xception-v1.yaml alone; a -small variant says what it changes."""
    experiments = DATA.parent / "experiments"
    variants = sorted(experiments.glob("*-small.yaml")) + sorted(DATA.glob("*-small.yaml"))
    assert len(variants) >= 20
    for path in variants:
        lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
        assert lines[0].startswith("base: ") and len(lines) <= 8, path
    architecture = [p.name for p in experiments.glob("*.yaml") if "sep_num_filters: 64" in p.read_text()]
    assert architecture == ["xception-v1.yaml"]
