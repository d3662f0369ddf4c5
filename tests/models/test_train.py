import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxoip.models.train as train_lib
from jaxoip import cli
from jaxoip.cli import train as train_cmd
from jaxoip.errors import JaxoipError
from jaxoip.models.train import (
    TrainConfig,
    epoch_batches,
    evaluate_model,
    learning_rate_schedule,
    make_optimizer,
    train,
)


def test_short_training_beats_90_percent(tiny_trained, mnist):
    h = tiny_trained.history
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    assert len(h["loss"]) == 2 and h["loss"][1] < h["loss"][0]
    assert h["val_accuracy"][-1] > 0.90
    assert evaluate_model(tiny_trained, mnist)["accuracy"] == pytest.approx(h["val_accuracy"][-1], abs=1e-6)


def _weights(trained):
    return jax.tree.leaves(nnx.state(trained.model, nnx.Param))


def test_same_seed_same_weights_other_seed_differs(mnist):
    cfg = TrainConfig(epochs=1, train_subset=640, seed=7)
    a, b = (train(cfg, data=mnist, progress=False) for _ in range(2))
    c = train(TrainConfig(epochs=1, train_subset=640, seed=8), data=mnist, progress=False)
    for x, y in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(_weights(a), _weights(c)))


def test_power_schedule_matches_study_log():
    lr = learning_rate_schedule(TrainConfig())
    # The study's log: lr 1.315e-5 at iteration 75,040 with lr0 1e-3 and rate 1e-3.
    assert float(lr(75_040)) == pytest.approx(1.315e-5, rel=1e-3)
    assert float(lr(0)) == pytest.approx(1e-3)


def test_exponential_and_constant_schedules():
    exp = learning_rate_schedule(TrainConfig(schedule="exponential", decay_rate=0.5, decay_steps=100))
    assert float(exp(200)) == pytest.approx(0.25e-3)
    assert float(learning_rate_schedule(TrainConfig(schedule="none"))(10_000)) == pytest.approx(1e-3)


@pytest.mark.parametrize("name", train_lib.OPTIMIZERS)
def test_every_optimizer_takes_a_step(name):
    tx = make_optimizer(TrainConfig(optimizer=name))
    params = {"w": jax.numpy.ones(3)}
    updates, _ = tx.update({"w": jax.numpy.ones(3)}, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["w"][0]) < 1.0


def test_epoch_batches_keep_the_partial_batch():
    idx, w = epoch_batches(jax.random.key(0), 100, 64)
    assert idx.shape == (2, 64) and float(w.sum()) == 100
    assert sorted(np.asarray(idx).reshape(-1)[np.asarray(w).reshape(-1) > 0].tolist()) == list(range(100))


def test_bad_config_values():
    with pytest.raises(JaxoipError, match="unknown optimizer"):
        TrainConfig(optimizer="adagrad")
    with pytest.raises(JaxoipError, match="at least 1"):
        TrainConfig(epochs=0)


def test_train_command_writes_checkpoint_history_and_plot(tmp_path, mnist, capsys):
    out = tmp_path / "m"
    rc = cli.run(train_cmd.main, ["--epochs", "1", "--train-subset", "256", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert (out / "metadata.json").is_file()
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_accuracy"]) == 1
    assert (out / "history.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # One unit: nothing beside the folder.
    assert "test accuracy" in capsys.readouterr().out


def test_train_command_help():
    with pytest.raises(SystemExit) as e:
        train_cmd.main(["--help"])
    assert e.value.code == 0
