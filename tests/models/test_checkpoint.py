import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxoip.errors import CheckpointError, JaxoipError
from jaxoip.models import checkpoint
from jaxoip.models.checkpoint import load_model, load_reference_model, save_model
from jaxoip.models.train import evaluate_model


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
    meta["metadata_checksum"] = checkpoint.metadata_checksum(meta)  # Consistent, but not the saved weights' shape.
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
        save_model(path, tiny_trained, overwrite=True)
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


def test_save_refuses_to_replace_without_overwrite(tiny_trained, tiny_checkpoint):
    from jaxoip._io import OutputError

    with pytest.raises(OutputError, match="--overwrite"):
        save_model(tiny_checkpoint, tiny_trained)


def _edit_meta(folder, **changes):
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    (folder / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "std", [{"mean": 0.1, "std": 0.0}, {"mean": float("nan"), "std": 0.3}, {"mean": 0.1, "std": -1.0}]
)
def test_invalid_standardization_is_refused(tiny_checkpoint, tmp_path, std):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    _edit_meta(bad, standardization=std)
    with pytest.raises(CheckpointError, match="standardization"):
        load_model(bad)


def test_standardization_is_covered_by_the_checksum(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    meta = json.loads((bad / "metadata.json").read_text())
    _edit_meta(
        bad, standardization={"mean": meta["standardization"]["mean"] + 0.01, "std": meta["standardization"]["std"]}
    )
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_model(bad)


def test_non_finite_parameters_are_refused(tiny_trained, tmp_path):
    import dataclasses

    graphdef, state = nnx.split(tiny_trained.model)
    state = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(np.nan) if a.ndim else a, state)
    broken = dataclasses.replace(tiny_trained, model=nnx.merge(graphdef, state))
    with pytest.raises(CheckpointError, match="non-finite"):
        save_model(tmp_path / "nan", broken)
    assert not (tmp_path / "nan").exists()
    # Written anyway (by hand, as an old jaxoip or a corrupt file would): refused on load.
    folder = tmp_path / "written"
    folder.mkdir()
    monkey = checkpoint._check_finite_params
    checkpoint._check_finite_params = lambda *a: None
    try:
        checkpoint.write_checkpoint(folder, broken)
    finally:
        checkpoint._check_finite_params = monkey
    with pytest.raises(CheckpointError, match="non-finite weights in layer Conv2D_1"):
        load_model(folder)


def test_damaged_orbax_files_give_one_line_without_asyncio_noise(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    truncated, garbage = _copy(tiny_checkpoint, tmp_path / "truncated"), _copy(tiny_checkpoint, tmp_path / "garbage")
    for f in (truncated / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 10_000:
            f.write_bytes(f.read_bytes()[:1000])
    for f in (garbage / "state").rglob("*"):
        if f.is_file() and f.name != "_METADATA":
            f.write_bytes(b"garbage")
    for bad in (truncated, garbage):
        code = (
            "from jaxoip import cli; from jaxoip.models import checkpoint; "
            f"cli.execute(lambda a: checkpoint.load_model({str(bad)!r}))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: cannot restore parameters"), proc.stderr
        assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr


def test_repeated_damaged_reads_stay_quiet(tiny_checkpoint, tmp_path):
    """The teardown noise is a race; five failed reads and a pause give it every chance to show."""
    import subprocess
    import sys

    bad = _copy(tiny_checkpoint, tmp_path / "truncated")
    for f in (bad / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 10_000:
            f.write_bytes(f.read_bytes()[:1000])
    code = (
        "import time\nfrom jaxoip.models import checkpoint\nfrom jaxoip.errors import CheckpointError\n"
        f"for _ in range(5):\n    try:\n        checkpoint.load_model({str(bad)!r})\n"
        "    except CheckpointError:\n        pass\ntime.sleep(1)\nimport gc\ngc.collect()\nprint('done')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
    assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_teardown_filter_passes_other_reports_on(monkeypatch, tmp_path):
    import logging
    import sys
    import types

    from jaxoip.models import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with checkpoint._quiet_failed_read(tmp_path / "a"):
        pass
    assert sys.unraisablehook == seen.append  # A read that succeeds leaves the hook as it was.
    with pytest.raises(ValueError), checkpoint._quiet_failed_read(tmp_path / "b"):
        raise ValueError("damaged")
    assert sys.unraisablehook != seen.append  # After a failed read the filter stays.
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
    sys.unraisablehook(closed)
    sys.unraisablehook(other)
    assert seen == [other]
    # asyncio's records of failed reads are dropped only for the checkpoints passed in.
    record = logging.LogRecord("asyncio", logging.ERROR, "", 0, "Task exception was never retrieved\n%s", None, None)
    record.args = (f"exception=ValueError('reading {tmp_path / 'b'}/d/1')",)
    assert not checkpoint._FAILED_READS.filter(record)
    record.args = (f"exception=ValueError('reading {tmp_path / 'c'}/d/1')",)
    assert checkpoint._FAILED_READS.filter(record)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["model_config"]["conv"][2].__setitem__(2, "tanh"),  # Conv2D_3 relu -> tanh
        lambda m: m["model_config"]["dense"][1].__setitem__(1, "relu"),  # Dense_2 softmax -> relu
        lambda m: m["standardization"].__setitem__("std", m["standardization"]["std"] * 1.01),
        lambda m: m.__setitem__("format", "jaxoip-checkpoint/2"),
    ],
    ids=["conv-activation", "dense-activation", "std", "format"],
)
def test_edited_metadata_is_refused(tiny_checkpoint, tmp_path, edit):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    meta = json.loads((bad / "metadata.json").read_text())
    edit(meta)
    (bad / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its checksum") as e:
        load_model(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["jaxoip-checkpoint/1", "jaxoip-checkpoint/2"])
def test_relabelled_old_format_without_checksum_is_refused(tiny_checkpoint, tmp_path, fmt):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    meta = json.loads((bad / "metadata.json").read_text())
    meta["format"] = fmt
    meta["standardization"]["std"] *= 1.01
    del meta["metadata_checksum"]
    (bad / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"is a {fmt} checkpoint, whose model config is not covered"):
        load_model(bad)


@pytest.mark.parametrize("std", [{"mean": 0.0, "std": 1e-30}, {"mean": 1e38, "std": 1.0}, {"mean": 1.0, "std": 1e9}])
def test_unusable_standardization_is_refused_on_save_and_load(tiny_trained, tiny_checkpoint, tmp_path, std):
    import dataclasses

    from jaxoip.data.mnist import Standardization

    broken = dataclasses.replace(tiny_trained, standardization=Standardization(**std))
    with pytest.raises(CheckpointError, match="unusable standardization.*between 0.001 and 10000"):
        save_model(tmp_path / "s", broken)
    assert not (tmp_path / "s").exists()
    # With a consistent checksum (written by hand), still refused on load.
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    meta = json.loads((bad / "metadata.json").read_text())
    meta["standardization"] = std
    meta["metadata_checksum"] = checkpoint.metadata_checksum(meta)
    (bad / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unusable standardization"):
        load_model(bad)


def test_reference_model_metadata_is_checked_and_its_weights_unchanged():
    meta = json.loads((checkpoint.reference_model_path() / "metadata.json").read_text())
    assert meta["format"] == checkpoint.FORMAT and meta["metadata_checksum"] == checkpoint.metadata_checksum(meta)
    # The weights the reference model was shipped with (checksum from before the format change).
    assert meta["params_checksum"] == "0c57c6f11e12dc3300ddfe033ced8c520470ad3bd5a5e4a0534bdbe269474c97"
    ref = load_reference_model()
    assert params_checksum_of(ref) == meta["params_checksum"]


def params_checksum_of(trained):
    return checkpoint.params_checksum(nnx.to_pure_dict(nnx.state(trained.model, nnx.Param)))


def _as_format_2(folder, std_scale=1.0):
    """Rewrites a checkpoint's metadata as jaxoip 0.1's format 2 wrote it (standardization checksum, no config one)."""
    import hashlib

    meta = json.loads((folder / "metadata.json").read_text())
    meta["format"] = "jaxoip-checkpoint/2"
    del meta["metadata_checksum"]
    s = meta["standardization"]
    meta["standardization_checksum"] = hashlib.sha256(
        json.dumps([float(s["mean"]), float(s["std"])]).encode()
    ).hexdigest()
    s["std"] *= std_scale
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def test_an_old_checkpoint_is_upgraded_into_a_new_folder(tiny_checkpoint, tmp_path):
    import numpy as np

    from jaxoip.models.checkpoint import upgrade_checkpoint

    old = _as_format_2(_copy(tiny_checkpoint, tmp_path / "old"))
    before = (old / "metadata.json").read_text()
    with pytest.raises(CheckpointError, match=r"jaxoip-checkpoint/2 checkpoint.*jaxoip.upgrade_checkpoint"):
        load_model(old)
    new = upgrade_checkpoint(old, tmp_path / "new")
    assert (old / "metadata.json").read_text() == before  # The old folder is left as it was.
    a, b = load_model(tiny_checkpoint), load_model(new)
    x = np.zeros((2, 28, 28, 1), np.float32)
    np.testing.assert_array_equal(a.layer_output(x, "Dense_2"), b.layer_output(x, "Dense_2"))
    assert b.standardization == a.standardization
    with pytest.raises(JaxoipError):  # The new folder exists now: nothing is replaced.
        upgrade_checkpoint(old, tmp_path / "new")


def test_an_edited_old_checkpoint_is_not_upgraded(tiny_checkpoint, tmp_path):
    from jaxoip.models.checkpoint import upgrade_checkpoint

    edited = _as_format_2(_copy(tiny_checkpoint, tmp_path / "old"), std_scale=1.5)
    with pytest.raises(CheckpointError, match="standardization does not match its checksum"):
        upgrade_checkpoint(edited, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(CheckpointError, match="is not a checkpoint|no checkpoint"):
        upgrade_checkpoint(tmp_path / "missing", tmp_path / "new")
    with pytest.raises(CheckpointError, match="two folder paths"):
        upgrade_checkpoint(None, tmp_path / "new")
