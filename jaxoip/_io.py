"""Output folders that never destroy what jaxoip did not write, and that a killed run can resume.

A command writes only into a folder that does not exist, is empty, or holds jaxoip's marker file
`.jaxoip.json` (command, configuration, jaxoip version, status and the files it wrote). The folder is
locked while a run writes it. Results are staged in a hidden temporary folder inside it and moved into
place at the end; the marker says "complete" only after that, so a killed run never leaves a folder
that looks complete. Work a run wants to keep across a kill goes to `partial` (resumed with `resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from jaxoip.errors import OutputError

MARKER = ".jaxoip.json"
LOCK = ".jaxoip.lock"
PARTIAL = ".jaxoip-partial"
TMP_PREFIX = ".jaxoip-tmp-"
_OURS = (MARKER, LOCK, PARTIAL)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("jaxoip")
    except Exception:  # noqa: BLE001 - not installed: a source checkout.
        return "unknown"


def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker of a jaxoip output folder, or None when `path` holds none (or an unreadable one)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and "command" in marker and "status" in marker else None


def _write_json_atomic(path: Path, obj: dict):
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new), key=str)
    diff = [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diff[:3])


def _lock_holder(path: Path) -> str | None:
    """The pid written in the lock file of `path` while another process holds the lock, else None."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # Also releases a lock just taken.
    return None


def _locked_error(path: Path, holder: str) -> OutputError:
    return OutputError(f"another jaxoip run (pid {holder}) is writing {path}; wait for it or choose another --out")


def _user_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name not in _OURS and not p.name.startswith(TMP_PREFIX))


def _inspect(path: Path, command: str, config: dict, overwrite: bool, resume: bool) -> dict | None:
    """Refuses a folder jaxoip may not write; returns its marker (None for a new or empty folder)."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} is a file, not a folder; choose a folder name")
    if not path.exists():
        if resume:
            raise OutputError(f"nothing to resume: {path} does not exist")
        return None
    marker = read_marker(path)
    if marker is None:
        # Without a marker nothing here is jaxoip's, whatever its name, except a lock left by a run killed
        # before it wrote its marker: partial or staging names count as the user's and are never touched.
        entries = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        if entries:
            raise OutputError(
                f"{path} holds files jaxoip did not write "
                f"({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
                "choose a new or empty folder"
            )
        if resume:
            raise OutputError(f"nothing to resume in {path}")
        return None
    ours = set(marker.get("files", []))
    extra = [e for e in _user_entries(path) if e not in ours]
    if extra and not (overwrite or resume):
        raise OutputError(f"{path} holds files jaxoip did not write ({', '.join(extra[:3])}); choose another folder")
    same = marker.get("command") == command
    if resume:
        if marker["status"] == "complete":
            raise OutputError(f"{path} is already complete; nothing to resume (--overwrite runs it again)")
        if not same:
            raise OutputError(f"cannot resume: {path} holds a run of {marker.get('command')}, not {command}")
        if marker.get("config") != json.loads(json.dumps(config, default=str)):
            raise OutputError(
                f"cannot resume {path} with other settings ({_config_diff(marker.get('config') or {}, config)}); "
                "use the same arguments, or --overwrite to start over"
            )
        return marker
    if overwrite:
        return marker
    what = "a complete result" if marker["status"] == "complete" else "an interrupted run"
    hint = (
        "--overwrite to replace it"
        if marker["status"] == "complete"
        else "--resume to finish it or --overwrite to start over"
    )
    raise OutputError(f"{path} holds {what} of {marker.get('command')}; pass {hint}")


@dataclasses.dataclass
class OutputDir:
    """A locked output folder being written: stage results in `staging`, keep resumable work in `partial`."""

    path: Path
    staging: Path
    partial: Path
    resumed: bool


def _clean_stale(path: Path):
    """Removes staging folders of earlier runs inside `path`, a folder whose marker says jaxoip wrote it.

    Only inside: nothing beside the folder is touched, whatever its name. The caller holds the lock, so
    no other live run is writing these.
    """
    for tmp in path.glob(TMP_PREFIX + "*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def prepare_output(
    path: str | os.PathLike,
    command: str,
    config: dict,
    overwrite: bool = False,
    resume: bool = False,
    expected_bytes: int = 0,
) -> Iterator[OutputDir]:
    """Checks, locks and prepares output folder `path`; on success moves the staged results into place.

    Call it before loading data or compiling: a folder jaxoip may not write, a locked one, a read-only
    or full disk is refused at once (`OutputError`). `config` (JSON-able) is recorded in the marker and
    must match on `resume`. With `overwrite`, only files that jaxoip's marker lists are replaced.
    """
    path = Path(path).absolute()
    if overwrite and resume:
        raise OutputError("--overwrite and --resume exclude each other")
    config = json.loads(json.dumps(config, default=str))
    holder = _lock_holder(path) if path.is_dir() else None
    if holder is not None:
        raise _locked_error(path, holder)
    _inspect(path, command, config, overwrite, resume)  # Before touching anything.
    created, fresh = not path.exists(), False
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"cannot write to {path}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(lock_fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise _locked_error(path, holder) from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, str(os.getpid()).encode(), 0)
        marker = _inspect(path, command, config, overwrite, resume)  # Again, now that we hold the lock.
        fresh = marker is None
        free = shutil.disk_usage(path).free
        if free < expected_bytes:
            raise OutputError(
                f"not enough room in {path}: {free / 2**20:.0f} MiB free, about {expected_bytes / 2**20:.0f} MiB needed"
            )
        partial = path / PARTIAL
        if marker is not None:  # Leftovers are cleaned only in a folder jaxoip's marker claims.
            _clean_stale(path)
            if not resume:
                shutil.rmtree(partial, ignore_errors=True)
        old_files = list(marker.get("files", [])) if marker else []
        record = {"command": command, "config": config, "jaxoip_version": _version(), "status": "running"}
        try:
            _write_json_atomic(path / MARKER, {**record, "files": old_files})
            staging = path / f"{TMP_PREFIX}{os.getpid()}"
            staging.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write to {path}: {e.strerror or e}") from None
        out = OutputDir(path, staging, partial, resumed=resume)
        try:
            yield out
            _finalize(out, record, old_files)
        except OSError as e:
            raise OutputError(f"cannot write to {path}: {e.strerror or e} ({e.filename or path})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if fresh and not (path / PARTIAL).exists():
            # A run that failed before keeping any work leaves nothing behind.
            for name in (MARKER, LOCK):
                with contextlib.suppress(OSError):
                    (path / name).unlink()
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()
        raise
    finally:
        os.close(lock_fd)


def _finalize(out: OutputDir, record: dict, old_files: list[str]):
    new = sorted(p.name for p in out.staging.iterdir())
    clash = [n for n in new if (out.path / n).exists() and n not in old_files]
    if clash:
        raise OutputError(f"{out.path} now holds {clash[0]}, which jaxoip did not write; results left unwritten")
    # While moving, every file either run wrote is listed, so a kill here leaves nothing unaccounted.
    _write_json_atomic(out.path / MARKER, {**record, "files": sorted(set(old_files) | set(new))})
    for name in old_files:
        if name not in new and name not in _OURS and "/" not in name and name not in ("", ".", ".."):
            _remove(out.path / name)
    for name in new:
        target = out.path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # Listed in the old marker, or the folder would have been refused.
        os.replace(out.staging / name, target)
    shutil.rmtree(out.partial, ignore_errors=True)
    _write_json_atomic(out.path / MARKER, {**record, "status": "complete", "files": new})


def add_output_flags(parser, what: str = "output folder"):
    """--overwrite and --resume, shared by the commands."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace the complete jaxoip {what} at --out")
    parser.add_argument(
        "--resume", action="store_true", help="finish the interrupted run at --out, keeping its done work"
    )
