import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxoip import checkpoint
from jaxoip.checkpoint import load_model, load_reference_model, save_model
from jaxoip.errors import CheckpointError
from jaxoip.train import evaluate_model


def _params(trained):
    return jax.tree.leaves(nnx.state(trained.model, nnx.Param))


def test_round_trip(tiny_trained, tiny_checkpoint):
    restored = load_model(tiny_checkpoint)
    for a, b in zip(_params(tiny_trained), _params(restored)):
        np.testing.assert_array_equal(a, b)
    assert restored.config == tiny_trained.config
    assert restored.standardization == tiny_trained.standardization
    assert restored.history == tiny_trained.history
    assert restored.data_checksum == tiny_trained.data_checksum and len(restored.data_checksum) == 64


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "nothing")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_incomplete_checkpoint(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    (bad / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_model(bad)


def test_corrupt_parameter_data(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    data_files = [p for p in (bad / "state").rglob("*") if p.is_file() and p.stat().st_size > 10_000]
    assert data_files
    for p in data_files:
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
        p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_model(bad)


def test_truncated_parameter_data(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    for p in (bad / "state").rglob("*"):
        if p.is_file() and p.stat().st_size > 10_000:
            p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_model(bad)


def test_corrupt_metadata(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    (bad / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)


def test_mismatched_architecture(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    meta = json.loads((bad / "metadata.json").read_text())
    meta["model_config"]["conv"][0][0] = 16
    (bad / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot restore"):
        load_model(bad)


def test_interrupted_save_leaves_old_checkpoint(tiny_trained, tmp_path, monkeypatch):
    path = save_model(tmp_path / "m", tiny_trained)
    before = (path / "metadata.json").read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "params_checksum", boom)
    with pytest.raises(KeyboardInterrupt):
        save_model(path, tiny_trained)
    with pytest.raises(KeyboardInterrupt):
        save_model(tmp_path / "new", tiny_trained)
    assert (path / "metadata.json").read_text() == before
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_reference_model_scores_at_least_99_35(mnist):
    ref = load_reference_model()
    assert ref.data_checksum == mnist.checksum()
    acc = evaluate_model(ref, mnist)["accuracy"]
    assert acc >= 0.9935, acc
    assert ref.metrics["test_accuracy"] == pytest.approx(acc, abs=1e-6)
