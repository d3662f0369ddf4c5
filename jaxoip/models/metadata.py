"""A checkpoint's metadata.json, read and checked without JAX: its format, checksum and model config.

`jaxoip.models.checkpoint` restores the parameters; the commands read a checkpoint's layers from here
first, so a mistyped layer or map is refused before JAX is imported or the model loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from jaxoip.errors import CheckpointError
from jaxoip.models.spec import ModelConfig

FORMAT = "jaxoip-checkpoint/3"
OLD_FORMATS = ("jaxoip-checkpoint/1", "jaxoip-checkpoint/2")
REFERENCE_NAME = "reference_model"


def metadata_checksum(meta: dict) -> str:
    """SHA-256 over the fields of metadata.json that change results: format, model config, standardization."""
    fields = {k: meta.get(k) for k in ("format", "model_config", "standardization", "params_checksum")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def read_metadata(path: Path, old_formats: bool = False) -> dict:
    """metadata.json of the checkpoint folder `path`, checked against its checksum (`old_formats`: as written)."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (expected a folder with metadata.json and state/)")
    meta_file = path / "metadata.json"
    if not meta_file.is_file() or not (path / "state").is_dir():
        raise CheckpointError(f"{path} is not a complete checkpoint (metadata.json or state/ missing)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_file} is corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CheckpointError(f"{meta_file} is not a {FORMAT} file")
    if old_formats and meta["format"] in OLD_FORMATS:
        if "metadata_checksum" in meta:
            raise CheckpointError(f"{meta_file}: a {meta['format']} file has no metadata_checksum (edited checkpoint)")
        std = meta.get("standardization") or {}
        if meta["format"] == "jaxoip-checkpoint/2" and meta.get("standardization_checksum") != old_std_checksum(
            std.get("mean"), std.get("std")
        ):
            raise CheckpointError(f"{meta_file}: the standardization does not match its checksum (edited checkpoint)")
        return meta
    if meta.get("metadata_checksum") != metadata_checksum(meta):
        if meta["format"] in OLD_FORMATS and "metadata_checksum" not in meta:
            raise CheckpointError(
                f"{path} is a {meta['format']} checkpoint, whose model config is not covered by a checksum; "
                f"check its model_config, then re-save it with jaxoip.upgrade_checkpoint(path, new_path)"
            )
        raise CheckpointError(
            f"{meta_file}: the format, model config or standardization does not match its checksum "
            "(edited or corrupt checkpoint)"
        )
    return meta


def old_std_checksum(mean, std) -> str:
    """The standardization checksum of format 2 (read only by `upgrade_checkpoint`)."""
    try:
        return hashlib.sha256(json.dumps([float(mean), float(std)]).encode()).hexdigest()
    except (TypeError, ValueError):
        return ""


def reference_model_path() -> Path:
    return Path(str(resources.files("jaxoip") / REFERENCE_NAME))


def checkpoint_model_config(path: str | os.PathLike | None):
    """The `ModelConfig` in the metadata.json of the checkpoint folder `path` (None or "reference": the reference
    model's), or None for a Keras file, a factory or a path that is no checkpoint folder (its loader then says why)."""
    if path in (None, "reference"):
        path = reference_model_path()
    if (
        not isinstance(path, (str, os.PathLike))
        or ":" in Path(path).name
        or not (Path(path) / "metadata.json").is_file()
    ):
        return None
    try:
        return ModelConfig.from_dict(read_metadata(Path(path).absolute())["model_config"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None  # The loader says what is wrong with the checkpoint.
