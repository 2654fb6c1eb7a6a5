"""The parameter dataclasses: the report's tables, checks with clear errors, YAML/JSON files."""

import dataclasses
import json

import pytest

from contham.config import HamiltonianParameters, LearningParameters, NetworkParameters, Preset
from contham.models import PRESETS, preset


def test_defaults_are_table_4_1():
    p = Preset()
    assert p.network.ham_params == HamiltonianParameters("TwoLayersHam", 6, 3, 0.05, "ReLU", "Xavier")
    net = p.network
    assert (net.nb_units, net.nb_features, net.ks_conv, net.strd_conv, net.pd_conv) == (3, [3, 32, 64, 112], 3, 1, 1)
    assert (net.pooling, net.ks_pool, net.strd_pool, net.init) == ("Avg", 2, 2, "Xavier")
    assert (net.second_final_fc, net.batchnorm, net.both_border_pad, net.dropout) == (None, False, False, None)
    learn = p.learning
    assert (learn.training_steps_max, learn.batch_size, learn.lr, learn.lr_decay_at) == (
        80_000,
        100,
        0.1,
        [80, 120, 160],
    )
    assert (learn.lr_decay, learn.wd, learn.alpha, learn.b_in_reg, learn.h_div) == (0.1, 2e-4, 2e-4, False, True)
    assert (learn.optimiser, learn.momentum, learn.crop_and_flip) == ("SGD", 0.9, True)


def test_nominal_differs_from_chang_as_table_4_2_says():
    chang, nominal = preset("chang"), preset("nominal")
    assert nominal.learning == dataclasses.replace(
        chang.learning, lr_decay_at=[80, 120, 150], b_in_reg=True, h_div=False
    )
    assert nominal.network == dataclasses.replace(
        chang.network,
        ham_params=dataclasses.replace(chang.network.ham_params, h=0.2),
        batchnorm=True,
        both_border_pad=True,
        dropout=[0.1, 0.2],
    )


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_presets_round_trip_through_files(tmp_path, name, suffix):
    p = preset(name)
    path = p.save(tmp_path / f"{name}{suffix}")
    assert Preset.load(path) == p
    if suffix == ".json":
        assert json.loads(path.read_text())["network"]["ham_params"]["function"] == p.network.ham_params.function


def test_each_dataclass_round_trips(tmp_path):
    for obj in (
        HamiltonianParameters("J2", n_blocks=3, ks=5, h=0.01, act="Tanh", solver="rk4"),
        NetworkParameters(second_final_fc=100, dropout=[0.2, 0.5], both_border_pad=True),
        LearningParameters(optimiser="Adam", momentum=(0.7, 0.7), lr=1e-3),
    ):
        assert type(obj).load(obj.save(tmp_path / "p.yml")) == obj


def test_report_names_and_hand_written_yaml(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(
        "hamParams: {hamiltonianFunction: J1, h: 1e-1, act: relu}\n"
        "batchnorm_bool: true\nsecond_final_FC: 100\nnb_features: [3, 32, 64, 112]\n"
    )
    net = NetworkParameters.load(path)
    assert net.ham_params.function == "J1" and net.ham_params.h == 0.1 and net.ham_params.act == "ReLU"
    assert net.batchnorm is True and net.second_final_fc == 100
    learn = LearningParameters.from_dict({"wd": 2e-6, "alpha": 2e-6, "optimiser": "adam", "momentum": [0.7, 0.7]})
    assert learn.optimiser == "Adam" and learn.momentum == (0.7, 0.7)
    assert HamiltonianParameters.from_dict({"hamiltonianFunctions": "j2"}).function == "J2"


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (NetworkParameters, dict(nb_features=[3, 64, 32, 112]), "nb_features must not decrease"),
        (NetworkParameters, dict(nb_units=2), r"nb_features must have nb_units \+ 1 = 3"),
        (NetworkParameters, dict(nb_features=[3, 32, 64]), "nb_features must have nb_units"),
        (NetworkParameters, dict(nb_features=[3, 32, 63, 112]), "nb_features.*even.*TwoLayersHam"),
        (
            NetworkParameters,
            dict(ham_params=HamiltonianParameters("J1"), nb_features=[3, 31, 64, 112]),
            "nb_features.*even.*J1",
        ),
        (NetworkParameters, dict(pooling="Mean"), "pooling must be one of 'Avg', 'Max'"),
        (NetworkParameters, dict(init="Kaiming"), "init must be one of 'Zeros', 'Ones', 'Normal', 'Xavier'"),
        (NetworkParameters, dict(dropout=[0.1, 1.0]), r"dropout\[1\] must be a number in \[0, 1\)"),
        (NetworkParameters, dict(dropout=[-0.1, 0.2]), r"dropout\[0\]"),
        (NetworkParameters, dict(dropout=0.2), "dropout must be None or two probabilities"),
        (NetworkParameters, dict(ks_conv=0), "ks_conv must be an integer >= 1"),
        (NetworkParameters, dict(pd_conv=-1), "pd_conv must be an integer >= 0"),
        (NetworkParameters, dict(second_final_fc=0), "second_final_fc"),
        (NetworkParameters, dict(batchnorm="yes"), "batchnorm must be True or False"),
        (NetworkParameters, dict(ham_params=3), "ham_params must be a HamiltonianParameters"),
        (HamiltonianParameters, dict(function="J3"), "function must be one of 'J1', 'J2', 'TwoLayersHam'"),
        (HamiltonianParameters, dict(act="gelu"), "act must be one of 'ReLU', 'Tanh'"),
        (HamiltonianParameters, dict(init="Uniform"), "init must be one of"),
        (HamiltonianParameters, dict(h=0.0), "h must be a finite number > 0"),
        (HamiltonianParameters, dict(h=-0.1), "h must be a finite number > 0"),
        (HamiltonianParameters, dict(ks=4), "ks must be odd"),
        (HamiltonianParameters, dict(n_blocks=0), "n_blocks must be an integer >= 1"),
        (HamiltonianParameters, dict(solver="dopri5"), "solver must be one of 'euler'"),
        (HamiltonianParameters, dict(function="J1", solver="verlet"), "solver='verlet' needs a split Hamiltonian"),
        (LearningParameters, dict(optimiser="RMSprop"), "optimiser must be one of 'SGD', 'Adam'"),
        (LearningParameters, dict(optimiser="Adam"), r"momentum must be a pair \(beta1, beta2\)"),
        (LearningParameters, dict(momentum=1.5), r"momentum must be a number in \[0, 1\)"),
        (LearningParameters, dict(lr=0), "lr must be a finite number > 0"),
        (LearningParameters, dict(lr_decay_at=[120, 80]), "lr_decay_at must be epochs in increasing order"),
        (LearningParameters, dict(wd=-1e-4), "wd must be a finite number >= 0"),
        (LearningParameters, dict(batch_size=0), "batch_size must be an integer >= 1"),
        (LearningParameters, dict(b_in_reg=1), "b_in_reg must be True or False"),
    ],
)
def test_bad_values_raise_naming_the_parameter(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_replace_checks_again_and_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="nb_features must have"):
        dataclasses.replace(NetworkParameters(), nb_units=4)
    with pytest.raises(ValueError, match="unknown NetworkParameters parameter 'nb_unit'; allowed: ham_params"):
        NetworkParameters.from_dict({"nb_unit": 3})
    with pytest.raises(ValueError, match=r"path must end in \.yaml, \.yml or \.json"):
        Preset().save(tmp_path / "preset.txt")
    with pytest.raises(ValueError, match="preset must be one of 'chang'"):
        preset("resnet20")
