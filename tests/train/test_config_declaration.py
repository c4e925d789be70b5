"""Each model hyperparameter is declared once (a field of MACEConfig); the training options, the
flags of ``openmace train``, its YAML keys and ``--help`` are derived from that declaration."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from openmace.cli.main import build_parser
from openmace.model import MACEConfig
from openmace.model.config import user_options
from openmace.train.config import MODEL_OPTIONS, TrainConfig, build_config, field_aliases

COMPUTED = (
    "atomic_numbers",
    "atomic_energies",
    "avg_num_neighbors",
    "scale",
    "shift",
    "heads",
    "embedding_specs",
    "embedding_readout",
)


def default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def test_model_files_keep_their_config_keys():
    assert [f.name for f in fields(MACEConfig)] == [
        "atomic_numbers",
        "atomic_energies",
        "r_max",
        "num_bessel",
        "num_polynomial_cutoff",
        "max_ell",
        "hidden_irreps",
        "correlation",
        "num_interactions",
        "radial_mlp",
        "readout_mlp",
        "avg_num_neighbors",
        "scale",
        "shift",
        "residual_first",
        "pair_repulsion",
        # foundation-model options (files written before them load with the defaults)
        "interaction",
        "interaction_first",
        "distance_transform",
        "apply_cutoff",
        "edge_irreps",
        "edge_irreps_first",
        "agnostic_product",
        "readout_bias",
        "heads",
        "embedding_specs",
        "embedding_readout",
    ]
    data = MACEConfig([1], [0.0]).to_dict()
    old = {k: v for k, v in data.items() if k in [f.name for f in fields(MACEConfig)][:16]}
    assert MACEConfig.from_dict(old) == MACEConfig([1], [0.0])
    with pytest.raises(ValueError, match="unknown field"):
        MACEConfig.from_dict({**data, "channels": 4})


def test_every_field_declares_help_and_data_fields_are_not_options():
    for f in fields(MACEConfig):
        assert f.metadata["help"], f.name
        assert f.metadata["option"] == (f.name not in COMPUTED), f.name
    assert tuple(f.name for f in user_options()) == MODEL_OPTIONS


def test_training_options_are_the_model_declarations():
    train_fields = {f.name: f for f in fields(TrainConfig)}
    for f in user_options():
        t = train_fields[f.name]
        assert default(t) == default(f), f.name
        assert t.metadata["help"] == f.metadata["help"], f.name
        assert t.metadata["aliases"] == f.metadata["aliases"], f.name
        assert t.metadata["check"] is f.metadata["check"], f.name  # the same validator
    # no training option is declared beside them: TrainConfig's own body declares none
    assert not set(TrainConfig.__dict__["__annotations__"]) & set(MODEL_OPTIONS)
    for name in COMPUTED:
        assert name not in train_fields
    # every spelling of a model option means that option and nothing else
    aliases = field_aliases()
    for f in user_options():
        for spelling in (f.name, *f.metadata["aliases"]):
            assert aliases[spelling] == f.name


def test_help_lists_every_option_with_default_and_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no line wrapping
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    text = " ".join(train.format_help().split())
    for f in fields(TrainConfig):
        described = f"{f.metadata['help']} (default: {default(f)})"
        assert described in text, f.name
        flags = actions[f.name].option_strings
        for name in (f.name, *f.metadata["aliases"]):
            assert f"--{name}" in flags and f"--{name.replace('_', '-')}" in flags, name


@pytest.mark.parametrize(
    "flag",
    [
        "--max-ell",
        "--max_ell",
        "--r-max",
        "--radial-MLP",
        "--radial_MLP",
        "--MLP_irreps",
        "--num_radial_basis",
        "--num-channels",
        "--max-L",
    ],
)
def test_flag_spellings_parse(flag):
    parser = build_parser()
    value = {"--radial-MLP": "8,8", "--radial_MLP": "8,8", "--MLP_irreps": "16x0e"}.get(flag, "2")
    args = parser.parse_args(["train", flag, value])
    assert len([k for k in vars(args) if k in {f.name for f in fields(TrainConfig)}]) == 1


def test_mace_torch_spellings_in_yaml():
    cfg = build_config(
        {
            "train_file": "x",
            "MLP_irreps": "16x0e",
            "radial_MLP": [32, 32],
            "num_radial_basis": 10,
            "num_cutoff_basis": 6,
            "num_channels": 16,
        },
        {"max_L": "2"},
    )
    options = cfg.model_options()
    assert options["readout_mlp"] == [16] and options["radial_mlp"] == [32, 32]
    assert options["num_bessel"] == 10 and options["num_polynomial_cutoff"] == 6
    assert options["hidden_irreps"] == "16x0e+16x1o+16x2e"
    config = MACEConfig(atomic_numbers=[1], atomic_energies=[0.0], **options)
    assert {k: v for k, v in config.to_dict().items() if k in options} == options


def test_channels_and_max_L_edit_the_hidden_irreps():
    def hidden(**values):
        return build_config({"train_file": "x", **values}, {}).hidden_irreps

    assert hidden() == default(next(f for f in user_options() if f.name == "hidden_irreps"))
    assert hidden(channels=8) == "8x0e+8x1o"
    assert hidden(max_L=0) == "128x0e"
    assert hidden(hidden_irreps="64x0e+64x1o", max_L=2) == "64x0e+64x1o+64x2e"
    assert hidden(hidden_irreps="64x0e+64x1o+64x1e") == "64x0e+64x1o+64x1e"


@pytest.mark.parametrize(
    "name,bad",
    [
        ("r_max", -1.0),
        ("r_max", float("nan")),
        ("num_bessel", 0),
        ("num_polynomial_cutoff", 0),
        ("max_ell", 7),
        ("hidden_irreps", "8x1o"),
        ("hidden_irreps", "8x0e+4x1o"),
        ("hidden_irreps", "8x0e+8x4e"),
        ("correlation", 5),
        ("num_interactions", 0),
        ("radial_mlp", [8, 0]),
        ("readout_mlp", [0]),
    ],
)
def test_one_validator_one_message(name, bad):
    with pytest.raises(ValueError, match="^invalid model config: ") as model_error:
        MACEConfig(atomic_numbers=[1], atomic_energies=[0.0], **{name: bad})
    problem = str(model_error.value).removeprefix("invalid model config: ")
    with pytest.raises(ValueError, match="^invalid training config: ") as train_error:
        build_config({"train_file": "x", name: bad}, {})
    assert problem in str(train_error.value)


def test_every_model_option_has_a_validator_or_is_a_switch():
    for f in user_options():
        assert f.metadata["check"] is not None or f.type == "bool", f.name
