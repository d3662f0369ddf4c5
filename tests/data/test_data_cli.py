"""`--data PATH` on the commands, and `train --data` of a CNN of the user's layers (--conv, --pool, --dense)."""

import argparse
import json

import numpy as np
import pytest

from jaxoip import cli
from jaxoip.cli import activations, compare_seeds, flags, scan_all_maps
from jaxoip.cli import train as train_cmd
from jaxoip.data.images import load_data, load_images
from jaxoip.errors import DataError, JaxoipError
from jaxoip.models.cnn import ModelConfig
from jaxoip.models.train import model_config_for_data


def _colour_npz(path, n=(40, 12), shape=(32, 32, 3), classes=3):
    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(n[0]) % classes, np.arange(n[1]) % classes
    # Class c brightens channel c: learnable in a few steps.
    x_train = rng.integers(0, 100, (n[0], *shape)).astype(np.uint8)
    x_test = rng.integers(0, 100, (n[1], *shape)).astype(np.uint8)
    for x, y in ((x_train, y_train), (x_test, y_test)):
        x[np.arange(len(y)), :, :, y % shape[-1]] += 120
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def test_layer_lists_parse_as_colon_items():
    p = flags.parser("t", "t")
    flags.add_flags(p, ModelConfig, only=("conv", "pool", "dense"))
    args = p.parse_args(["--conv", "32:3:relu, 64:3:relu", "--dense", "64:relu,10:softmax"])
    assert args.conv == ((32, 3, "relu"), (64, 3, "relu"))
    assert args.dense == ((64, "relu"), (10, "softmax"))
    assert args.pool == (2, 2)  # The dataclass's default, shown as typed.
    convert = p._option_string_actions["--conv"].type
    with pytest.raises(argparse.ArgumentTypeError, match="INT:INT:STR"):
        convert("32:3")
    with pytest.raises(argparse.ArgumentTypeError, match="'x:3:relu'"):
        convert("x:3:relu")


def test_model_config_follows_the_data(tmp_path):
    data = load_images(_colour_npz(tmp_path / "c.npz"))
    config = model_config_for_data(data, conv=((4, 3, "relu"),), pool=(2,))
    assert config.input_shape == (32, 32, 3) and config.dense == ((100, "relu"), (3, "softmax"))
    with pytest.raises(JaxoipError, match="output layer has 10 units but the data .* has 3 classes"):
        model_config_for_data(data, dense=((10, "softmax"),))
    with pytest.raises(JaxoipError, match=r"bad model layers: layer 'Conv2D_4' \(conv\) leaves no output"):
        model_config_for_data(data, conv=((4, 9, "relu"),) * 4, pool=())
    with pytest.raises(JaxoipError, match="bad model layers: more pool layers"):
        model_config_for_data(data, conv=((4, 3, "relu"),), pool=(2, 2))


def test_data_and_data_dir_exclude_each_other(tmp_path):
    with pytest.raises(DataError, match="not both"):
        load_data(tmp_path / "x.npz", "/some/mnist")


def test_train_colour_npz_with_own_layers(tmp_path, capsys):
    npz = _colour_npz(tmp_path / "c.npz")
    out = tmp_path / "model"
    args = ["--data", str(npz), "--conv", "4:3:relu,8:3:relu", "--pool", "2", "--dense", "16:relu,3:softmax"]
    args += ["--epochs", "1", "--batch-size", "8", "--no-progress", "--no-cache", "--out", str(out)]
    assert cli.run(train_cmd.main, args) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_config"]["input_shape"] == [32, 32, 3]
    assert meta["model_config"]["conv"] == [[4, 3, "relu"], [8, 3, "relu"]]
    assert meta["model_config"]["dense"][-1] == [3, "softmax"]
    assert meta["train_config"]["data_source"] == f"npz:{npz.resolve()}"
    assert meta["data_checksum"] == load_images(npz).checksum()
    assert np.isfinite(meta["history"]["val_loss"]).all()
    assert "model input 32x32x3, 3 classes" in capsys.readouterr().out
    # A wrong output layer is one line, before any output folder.
    bad = ["--data", str(npz), "--dense", "10:softmax", "--epochs", "1", "--out", str(tmp_path / "bad")]
    assert cli.run(train_cmd.main, bad) == 2
    assert "has 3 classes" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as stop:  # argparse's one line; `cli.execute` turns it into the exit status.
        cli.run(train_cmd.main, [*bad[:2], "--conv", "4:3", "--out", str(tmp_path / "bad")])
    assert stop.value.code == 2 and "expected items INT:INT:STR" in capsys.readouterr().err


@pytest.mark.parametrize("command", [scan_all_maps, activations, compare_seeds])
def test_commands_refuse_data_of_another_shape(command, tmp_path, capsys, tiny_checkpoint):
    npz = _colour_npz(tmp_path / "c.npz")
    if command is compare_seeds:
        for name in ("a", "b"):
            (tmp_path / name).symlink_to(tiny_checkpoint)
        models = ["--models", str(tmp_path / "a"), str(tmp_path / "b")]
    else:
        models = ["--model", str(tiny_checkpoint), "--layer", "Conv2D_1"]
        models += ["--confusion"] if command is activations else []
    rc = cli.run(command.main, [*models, "--data", str(npz), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: the images of npz:{npz.resolve()} are 32x32x3 (height x width x channels), but the model takes 28x28x1"
    )
    assert not (tmp_path / "o").exists()


def test_scan_with_data_records_its_source(tmp_path, mnist, tiny_checkpoint):
    npz = tmp_path / "mnist_part.npz"
    np.savez(
        npz,
        x_train=mnist.train_images[:200, ..., 0].astype(np.uint8),
        y_train=mnist.train_labels[:200],
        x_test=mnist.test_images[:100, ..., 0].astype(np.uint8),
        y_test=mnist.test_labels[:100],
    )
    out = tmp_path / "scan"
    args = ["--model", str(tiny_checkpoint), "--layer", "Conv2D_1", "--maps", "0-1", "--steps", "5", "--restarts", "1"]
    args += ["--precursor-starts", "4", "--screen", "1", "--exemplars", "2", "--no-progress", "--data", str(npz)]
    assert cli.run(scan_all_maps.main, [*args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_source"] == f"npz:{npz.resolve()}"
    assert summary["data_checksum"] == load_images(npz).checksum()
