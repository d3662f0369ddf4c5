"""Command-line options derived from the config dataclasses (`jaxoip.cli.flags`): one option per field."""

import argparse
import dataclasses
import re
from typing import Literal

import pytest

from jaxoip import cli
from jaxoip.cli import activations as activations_cmd
from jaxoip.cli import compare_seeds as compare_cmd
from jaxoip.cli import flags
from jaxoip.cli import scan_all_maps as scan_cmd
from jaxoip.cli import train as train_cmd
from jaxoip.models.train import TrainConfig
from jaxoip.numerics import PRECISIONS
from jaxoip.oip.config import ObjectiveConfig, OIPConfig
from jaxoip.seeds.compare import CompareConfig

COMMANDS = {
    "train": train_cmd,
    "scan_all_maps": scan_cmd,
    "compare_seeds": compare_cmd,
    "activations": activations_cmd,
}

# (config class, option prefix, the fields that are options) per command; None: every field not marked
# `flag: False`, which must then be exactly those in NOT_OPTIONS.
CONFIGS = {
    "train": [(TrainConfig, "", None)],
    "scan_all_maps": [(OIPConfig, "", None), (ObjectiveConfig, "", None)],
    "compare_seeds": [
        (CompareConfig, "", None),
        (TrainConfig, "", ("epochs", "train_subset")),
        (OIPConfig, "oip-", ("steps",)),
        (ObjectiveConfig, "oip-", ("wake",)),
    ],
    "activations": [],
}
NOT_OPTIONS = {
    TrainConfig: set(),
    OIPConfig: set(),
    ObjectiveConfig: set(),
    CompareConfig: {"oip", "oip_objective", "oip_scan_options"},  # --oip-steps, --oip-wake, --precision; library only.
}

# Every option the commands had before they were derived from the configs: these names must keep working.
OLD_OPTIONS = {
    "train": "--batch-size --data-dir --decay-rate --decay-steps --epochs --lr --momentum --no-cache --no-progress "
    "--optimizer --out --overwrite --precision --reg-param --regularizer --resume --schedule --seed --train-subset",
    "scan_all_maps": "--all-starts --blur --chunk-size --conv-criterion --data-dir --diversity --early-stop --epsilon "
    "--exemplars --facet-threshold --fourier-decay --jitter --l1 --layer --maps --model --no-cache --no-progress "
    "--no-wake --node --out --overwrite --param --precision --precursor-starts --quantity --recipes --restarts "
    "--resume --rotate --scale --screen --seed --steps --style --target --tv --wake",
    "compare_seeds": "--bootstrap --data-dir --epochs --layers --max-parallel --max-samples --models --no-cache "
    "--no-oip-wake --no-progress --oip-layer --oip-maps --oip-max-shift --oip-restarts --oip-source --oip-steps "
    "--oip-wake --out --overwrite --precision --resume --seed --seeds --test-subset --train-subset",
    "activations": "--cmap --compare --confusion --data-dir --exemplars --image --layer --misclassified --model "
    "--names --out --overwrite --per-row --standardize --uncertain --versus",
}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_config_field_has_exactly_one_option(command):
    actions = _options(COMMANDS[command]._parser())
    dests = [a.dest for a in actions]
    assert len(dests) == len(set(dests)), "two options write the same attribute"
    for cls, prefix, only in CONFIGS[command]:
        names = {f.name for f in dataclasses.fields(cls)}
        expected = set(only) if only else names - NOT_OPTIONS[cls]
        assert {f.name for f in flags.flag_fields(cls, only)} == expected
        for f in dataclasses.fields(cls):
            if f.name not in expected:
                continue
            name = flags.flag_name(f, prefix)
            matching = [a for a in actions if name in a.option_strings]
            assert len(matching) == 1, f"{cls.__name__}.{f.name}: {name}"
            assert matching[0].dest == prefix.replace("-", "_") + f.name
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


@pytest.mark.parametrize("command", COMMANDS)
def test_old_option_names_still_parse(command):
    strings = {s for a in _options(COMMANDS[command]._parser()) for s in a.option_strings}
    assert set(OLD_OPTIONS[command].split()) <= strings


def test_renamed_and_skipped_fields():
    (learning_rate,) = (f for f in dataclasses.fields(TrainConfig) if f.name == "learning_rate")
    assert flags.flag_name(learning_rate) == "--lr" and flags.flag_name(learning_rate, "x-") == "--x-lr"
    assert "--learning-rate" not in train_cmd._parser().format_help()
    assert "--transform-seed" not in scan_cmd._parser().format_help()


def _differences(got, want) -> dict:
    """Field -> (command's value, library's value) where two configs of one class differ."""
    return {
        f.name: (getattr(got, f.name), getattr(want, f.name))
        for f in dataclasses.fields(want)
        if getattr(got, f.name) != getattr(want, f.name)
    }


def test_no_arguments_give_the_library_defaults_field_by_field():
    # One default per option: a command run with no arguments builds exactly the library's configs.
    assert _differences(flags.config_from_args(TrainConfig, train_cmd._parser().parse_args([])), TrainConfig()) == {}
    scan = scan_cmd.oip_config(scan_cmd._parser().parse_args([]))
    assert _differences(scan, OIPConfig()) == {}  # --jitter ... --blur from --style study
    options = flags.config_from_args(ObjectiveConfig, scan_cmd._parser().parse_args([]))
    assert options == ObjectiveConfig() and options.wake  # Wake-up on in both; --no-wake is the study's search.
    cfg, tcfg = compare_cmd.configs(compare_cmd._parser().parse_args([]))
    assert _differences(cfg, CompareConfig()) == {}
    assert _differences(cfg.oip, CompareConfig().oip) == {} and _differences(cfg.oip, OIPConfig()) == {}
    assert _differences(tcfg, TrainConfig()) == {}
    assert activations_cmd._parser().parse_args([]).precision == "highest"


def test_scan_options_default_as_scan_maps():
    import inspect

    from jaxoip.oip.scan import scan_maps

    args = scan_cmd._parser().parse_args([])
    library = {k: p.default for k, p in inspect.signature(scan_maps).parameters.items()}
    # restarts: None in both, resolved once by `plan.default_restarts` (16, or 8 on a CPU).
    for option, name in {
        "layer": "layer_name",
        "maps": "map_indices",
        "restarts": "restarts",
        "precursor_starts": "precursor_starts",
        "screen": "screen",
        "seed": "seed",
        "node": "node",
        "chunk_size": "chunk_size",
    }.items():
        assert getattr(args, option) == library[name], option
    assert tuple(args.recipes.split(",")) == tuple(library["recipes"])


def test_a_diverging_command_default_is_caught():
    parser = scan_cmd._parser()
    parser.set_defaults(epsilon=0.02)
    assert _differences(scan_cmd.oip_config(parser.parse_args([])), OIPConfig()) == {"epsilon": (0.02, 0.01)}


def test_train_values_round_trip():
    argv = "--epochs 3 --lr 0.25 --optimizer adam --train-subset 100 --precision bf16 --seed 7".split()
    cfg = flags.config_from_args(TrainConfig, train_cmd._parser().parse_args(argv))
    assert cfg == TrainConfig(
        epochs=3, learning_rate=0.25, optimizer="adam", train_subset=100, precision="bf16", seed=7
    )
    assert flags.config_from_args(TrainConfig, train_cmd._parser().parse_args(["--train-subset", "none"])) == (
        TrainConfig()
    )


def test_scan_values_round_trip():
    argv = "--snapshot-steps 3,5 --early-stop --no-wake --tv 0.2 --quantity pre --steps 9 --seed 4".split()
    args = scan_cmd._parser().parse_args(argv)
    assert scan_cmd.oip_config(args) == OIPConfig(snapshot_steps=(3, 5), early_stop=True, tv=0.2, steps=9)
    assert flags.config_from_args(ObjectiveConfig, args) == ObjectiveConfig(quantity="pre", wake=False)
    robust = scan_cmd.oip_config(scan_cmd._parser().parse_args(["--style", "robust", "--jitter", "0"]))
    assert robust.jitter == 0.0 and robust.rotate == 10.0  # An option given wins over the style's preset.


def test_compare_values_round_trip():
    argv = "--layers Conv2D_2,Conv2D_3 --thresholds 0.1,0.2 --oip-layer none --oip-steps 7 --no-oip-wake".split()
    argv += "--precision tf32 --epochs 2 --ci 0.9 --oip-source shared --seed 3".split()
    cfg, tcfg = compare_cmd.configs(compare_cmd._parser().parse_args(argv))
    assert cfg == CompareConfig(
        layers=("Conv2D_2", "Conv2D_3"),
        thresholds=(0.1, 0.2),
        oip_layer=None,
        oip=OIPConfig(steps=7, precision="tf32"),
        oip_objective=ObjectiveConfig(wake=False),
        ci=0.9,
        oip_source="shared",
        seed=3,
    )
    assert tcfg == TrainConfig(epochs=2, precision="tf32")


def _help_entries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's entry in --help (first option string -> its text, whitespace collapsed)."""
    entries, current = {}, None
    for line in parser.format_help().split("options:", 1)[1].splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default(command):
    parser = COMMANDS[command]._parser()
    entries = _help_entries(parser)
    assert len(entries) == len(parser._actions)
    for option, text in entries.items():
        if option != "-h":
            assert "(default" in text, f"{command} {option}: {text}"


def test_help_shows_the_values_of_the_defaults():
    train = _help_entries(train_cmd._parser())
    assert "(default: 40)" in train["--epochs"] and "(default: 0.001)" in train["--lr"]
    assert "(default: highest)" in train["--precision"] and "{rmsprop,adam" in train["--optimizer"]
    scan = _help_entries(scan_cmd._parser())
    assert "(default: 9,18,36,72,144,288)" in scan["--snapshot-steps"] and "(default: True)" in scan["--wake"]
    assert "robust 2.0)" in scan["--jitter"]
    assert "(default: Conv2D_1,Conv2D_2,Conv2D_3)" in _help_entries(compare_cmd._parser())["--layers"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_literal_field_rejects_a_bad_choice(command, capsys):
    assert COMMANDS[command]._parser().parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit) as e:
        COMMANDS[command]._parser().parse_args(["--precision", "fp8"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fp8'" in err and all(p in err for p in PRECISIONS)
    assert err.startswith("error: ") and err.count("\n") == 1  # One line, no usage block.


@pytest.mark.parametrize(
    "argv",
    [["--optimizer", "lion"], ["--epochs", "three"], ["--train-subset", "1.5"]],
)
def test_bad_option_text_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        train_cmd._parser().parse_args(argv)
    assert e.value.code == 2 and "error: argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, argv, message",
    [
        (scan_cmd, ["--snapshot-steps", "3,-1"], "snapshot step must be at least 0"),
        (scan_cmd, ["--grad-eps", "0"], "grad_eps must be above 0"),
        (compare_cmd, ["--ci", "1.5"], "ci must be"),
        (compare_cmd, ["--oip-recipe", "nope"], "unknown noise recipe 'nope'"),
        (compare_cmd, ["--thresholds", "0.5,x"], None),  # argparse: not numbers.
        (train_cmd, ["--epochs", "0"], "epochs must be at least 1"),
    ],
)
def test_a_bad_value_is_one_error_line(module, argv, message, capsys, tmp_path):
    """Checked by the dataclass, before any model, data or output folder is touched."""
    out = tmp_path / "out"
    if message is None:
        with pytest.raises(SystemExit) as e:
            cli.run(module.main, [*argv, "--out", str(out)])
        assert e.value.code == 2 and "error: argument --thresholds" in capsys.readouterr().err
    else:
        assert cli.run(module.main, [*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


# --- The helper on its own -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Toy:
    count: int = 1
    rate: float = 0.5
    name: str = dataclasses.field(default="a", metadata={"choices": ("a", "b"), "help": "which one"})
    mode: Literal["x", "y"] = "x"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None
    renamed_field: int = dataclasses.field(default=0, metadata={"flag": "--short"})
    internal: int = dataclasses.field(default=0, metadata={"flag": False})


def test_the_helper_derives_every_type():
    p = flags.parser("toy", "a toy")
    actions = flags.add_flags(p, _Toy)
    assert set(actions) == {f.name for f in dataclasses.fields(_Toy)} - {"internal"}
    assert actions["mode"].choices == ("x", "y") and actions["name"].choices == ("a", "b")
    assert flags.config_from_args(_Toy, p.parse_args([])) == _Toy()
    argv = "--count 3 --rate 0.1 --name b --mode y --flag --sizes 4,5,6 --limit 9 --short 2".split()
    got = flags.config_from_args(_Toy, p.parse_args(argv), internal=5)
    assert got == _Toy(3, 0.1, "b", "y", True, (4, 5, 6), 9, 2, 5)
    assert flags.config_from_args(_Toy, p.parse_args(["--limit", "None", "--no-flag"])) == _Toy()
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "z"])


def test_the_helper_refuses_a_field_it_cannot_parse():
    @dataclasses.dataclass
    class Nested:
        inner: _Toy = _Toy()

    with pytest.raises(TypeError, match="inner"):
        flags.add_flags(argparse.ArgumentParser(), Nested)
