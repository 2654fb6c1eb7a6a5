"""The report's networks as data: each preset is a change of Chang et al.'s table 4.1.

=====================  =============================================================  ==========
preset                 what (report section)                                          parameters
=====================  =============================================================  ==========
``chang``              Chang et al. as replicated (4.2, table 4.1)                    497,002
``nominal``            the nominal two-layer network (4.3, table 4.2)                 497,066
``nominal_fc100``      nominal, ``second_final_fc = 100`` (4.3.3)                     659,446
``nominal_ks1``        nominal, ``ks = 1`` (4.3.4)                                    73,130
``nominal_ks5``        nominal, ``ks = 5``, lr 0.05 (4.3.4)                           1,344,938
``nominal_2units``     nominal, 2 units [3, 56, 112], lr 0.05, h 0.1 (4.3.4)          497,738
``nominal_4units``     nominal, 4 units [3, 36, 70, 100, 112] (4.3.4)                 783,458
``nominal_18blocks``   nominal, 18 blocks per unit, h 0.1 (4.3.4)                     1,453,418
``j1_relu``            J1 with ReLU (4.4.1, table 4.3)                                973,994
``j1_tanh``            J1 with Tanh (4.4.2, table 4.4)                                973,994
``j2``                 J2 with ReLU (4.5, table 4.5)                                  973,994
``j2_tanh``            J2 with Tanh (4.5)                                             973,994
``j1_relu_reduced``    2 units [3, 40, 80], h 0.05 (4.4.1)                            485,130
``j1_tanh_reduced``    2 units [3, 40, 80] (4.4.2)                                    485,130
``j2_reduced``         2 units [3, 40, 80], lr 0.005, 150,000 steps (4.5)             485,130
=====================  =============================================================  ==========

Counts are for 3x32x32 inputs and 10 classes. The report prints 973,944 for J1/J2: the layers it
describes give 973,994 (conv 896 + batch norm 64 + units 955,104 + FC 17,930), and no arrangement of
them gives 973,944. The text of section 4.3.4 lists only three widths for 4 units;
[3, 36, 70, 100, 112] is the list that gives its count.
"""

from __future__ import annotations

import copy
from typing import Any

from ..config import Preset

_NOMINAL: dict[str, Any] = {
    "network": {
        "ham_params": {"h": 0.2},
        "batchnorm": True,
        "both_border_pad": True,
        "dropout": [0.1, 0.2],
    },
    "learning": {"lr_decay_at": [80, 120, 150], "b_in_reg": True, "h_div": False},
}
_REDUCED = {"network": {"nb_units": 2, "nb_features": [3, 40, 80]}}


def _merge(base: dict[str, Any], *changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each of ``changes`` applied; nested dicts merge, other values replace."""
    out = copy.deepcopy(base)
    for change in changes:
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _net(**network: Any) -> dict[str, Any]:
    return {"network": network}


def _ham(**ham: Any) -> dict[str, Any]:
    return {"network": {"ham_params": ham}}


def _learn(**learning: Any) -> dict[str, Any]:
    return {"learning": learning}


_J1_RELU = _merge(_NOMINAL, _ham(function="J1", h=0.1), _learn(lr=0.05, lr_decay_at=[120, 140, 150]))
_J1_TANH = _merge(
    _NOMINAL,
    _ham(function="J1", act="Tanh"),
    _learn(training_steps_max=100_000, lr=0.01, lr_decay_at=[120, 160, 190], wd=2e-6, alpha=2e-6),
)
_J2 = _merge(
    _NOMINAL, _ham(function="J2", h=0.01), _learn(training_steps_max=100_000, lr=0.01, lr_decay_at=[150, 180, 190])
)

PRESETS: dict[str, dict[str, Any]] = {
    "chang": {},
    "nominal": _NOMINAL,
    "nominal_fc100": _merge(_NOMINAL, _net(second_final_fc=100)),
    "nominal_ks1": _merge(_NOMINAL, _ham(ks=1)),
    "nominal_ks5": _merge(_NOMINAL, _ham(ks=5), _learn(lr=0.05)),
    "nominal_2units": _merge(_NOMINAL, _net(nb_units=2, nb_features=[3, 56, 112]), _ham(h=0.1), _learn(lr=0.05)),
    "nominal_4units": _merge(_NOMINAL, _net(nb_units=4, nb_features=[3, 36, 70, 100, 112])),
    "nominal_18blocks": _merge(_NOMINAL, _ham(n_blocks=18, h=0.1)),
    "j1_relu": _J1_RELU,
    "j1_tanh": _J1_TANH,
    "j2": _J2,
    "j2_tanh": _merge(_J2, _ham(act="Tanh")),
    "j1_relu_reduced": _merge(_J1_RELU, _REDUCED, _ham(h=0.05)),
    "j1_tanh_reduced": _merge(_J1_TANH, _REDUCED),
    "j2_reduced": _merge(_J2, _REDUCED, _learn(lr=0.005, training_steps_max=150_000, lr_decay_at=[200, 250, 275])),
}
"""Each preset as its changes to `Preset` ``()`` (table 4.1)."""


def preset(name: str) -> Preset:
    """A fresh (checked, mutable) `Preset` of the report's network ``name``."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}; got {name!r}")
    return Preset.from_dict(_merge(Preset().to_dict(), PRESETS[name]))
