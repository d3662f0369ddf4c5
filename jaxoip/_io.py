"""Output folders that never destroy what jaxoip did not write, and that a killed run can resume.

A command writes only into a folder that does not exist, is empty, or holds jaxoip's marker file
`.jaxoip.json` (command, configuration, jaxoip version, status, and the files it wrote: `files` the
top-level names, `tree` every file and folder at every depth). The folder is locked while a run writes
it. Results are staged in a hidden temporary folder inside it and moved into place at the end; the
marker says "complete" only after that, so a killed run never leaves a folder that looks complete.
Work a run wants to keep across a kill goes to `partial` (resumed with `resume`), beside the checksums
of the run's inputs (`OutputDir.check_inputs`). Replacing a result removes only the
paths its `tree` lists, so whatever a user put into jaxoip's folders stays, and so do those folders.
A run that fails before it kept any work leaves the folder as it found it.
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
INPUTS = "inputs.json"  # In PARTIAL: checksums of the interrupted run's inputs.
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


def _tree(root: Path) -> list[str]:
    """Relative paths of every file and link under `root` at every depth, and of every folder (ending in '/')."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in list(dirnames):
            if (Path(dirpath) / d).is_symlink():  # os.walk lists links to folders as folders; a link is a file.
                dirnames.remove(d)
                filenames.append(d)
            else:
                out.append(f"{(rel / d).as_posix()}/")
        out += [(rel / f).as_posix() for f in filenames]
    return sorted(out)


def _inside(root: Path, rel: str) -> Path | None:
    """`root / rel` when `rel` is a relative path with no '..' and no link or file on the way from `root`; else None."""
    parts = Path(rel.rstrip("/")).parts
    if not parts or Path(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return None
    p = root
    for part in parts[:-1]:
        p = p / part
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            return None
    return p / parts[-1]


def _old_tree(path: Path, marker: dict) -> list[str]:
    """The paths an earlier run recorded; a marker of an older jaxoip lists top-level names only."""
    if isinstance(marker.get("tree"), list):
        return [str(e) for e in marker["tree"]]
    return [str(n) for n in marker.get("files", [])]


def _unlisted_folders(path: Path, marker: dict) -> list[str]:
    """Listed folders whose contents an older marker did not record (so they cannot be told from a user's)."""
    if isinstance(marker.get("tree"), list):
        return []
    return [n for n in marker.get("files", []) if (p := _inside(path, str(n))) and p.is_dir() and not p.is_symlink()]


def _has_work(partial: Path) -> bool:
    """Whether `partial` holds any saved work: a file other than the inputs' checksums."""
    return partial.is_dir() and any(e != INPUTS and not e.endswith("/") for e in _tree(partial))


def check_apart(out: str | os.PathLike, inputs: list[tuple[str, str | os.PathLike | None]]) -> None:
    """Refuses an --out that is, contains or lies inside one of the command's inputs, e.g. ("--model", path)."""
    o = Path(out).expanduser().resolve()
    for flag, given in inputs:
        if given is None:
            continue
        i = Path(given).expanduser().resolve()
        if o == i:
            raise OutputError(f"--out {out} is the {flag} input {given}; choose another --out")
        if i in o.parents:
            raise OutputError(f"--out {out} lies inside the {flag} input {given}; choose a folder outside it")
        if o in i.parents:
            raise OutputError(f"--out {out} contains the {flag} input {given}; choose a folder that does not")


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
    unlisted = _unlisted_folders(path, marker) if (overwrite or resume) else []
    if unlisted:
        raise OutputError(
            f"{path} was written by an older jaxoip, which did not record the files inside its folders "
            f"({', '.join(f'{n}/' for n in unlisted[:3])}), so they cannot be told from yours; "
            "move the folder away or empty it yourself"
        )
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
    finalizing: bool = False

    def check_inputs(self, **checksums: str) -> None:
        """Records the checksums of the run's inputs (data, model); on resume, refuses inputs that changed.

        Call it before the first work is kept in `partial`.
        """
        record = self.partial / INPUTS
        try:
            old = json.loads(record.read_text())
        except FileNotFoundError:
            old = None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}
        if old is None and _has_work(self.partial):
            raise OutputError(
                f"cannot resume {self.path}: the interrupted run recorded no checksums of its inputs, so it may have "
                "used other data or another model; --overwrite starts over"
            )
        for name, value in checksums.items():
            if old is not None and (not isinstance(old, dict) or old.get(name) != value):
                then = old.get(name) if isinstance(old, dict) else None
                raise OutputError(
                    f"cannot resume {self.path}: the {name} is not the interrupted run's (checksum "
                    f"{str(then)[:12]}... then, {value[:12]}... now); give the same {name}, or --overwrite to start "
                    "over"
                )
        try:
            self.partial.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(record, checksums)
        except OSError as e:
            raise OutputError(f"cannot write to {self.path}: {e.strerror or e}") from None


def _clean_stale(path: Path):
    """Removes staging folders of earlier runs inside `path`, a folder whose marker says jaxoip wrote it.

    Only inside: nothing beside the folder is touched, whatever its name. The caller holds the lock and
    has not made its own staging folder yet, so no live run is writing these: one named with this
    process's pid is a killed run's too (a container's next process often gets the same pid).
    """
    for tmp in path.glob(TMP_PREFIX + "*"):
        pid = tmp.name[len(TMP_PREFIX) :]
        # Exactly the names staging folders get (`TMP_PREFIX` + a pid), real folders, not links.
        if pid.isascii() and pid.isdigit() and tmp.is_dir() and not tmp.is_symlink():
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
    if not isinstance(path, (str, os.PathLike)):
        raise OutputError(f"the output folder must be a path, got {type(path).__name__}")
    path = Path(path).absolute()
    if overwrite and resume:
        raise OutputError("--overwrite and --resume exclude each other")
    config = json.loads(json.dumps(config, default=str))
    holder = _lock_holder(path) if path.is_dir() else None
    if holder is not None:
        raise _locked_error(path, holder)
    _inspect(path, command, config, overwrite, resume)  # Before touching anything.
    created, fresh, marker_written, out = not path.exists(), False, False, None
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
        old_tree = _old_tree(path, marker) if marker else []
        record = {"command": command, "config": config, "jaxoip_version": _version(), "status": "running"}
        try:
            marker_written = True
            _write_json_atomic(path / MARKER, {**record, "files": old_files, "tree": old_tree})
            staging = path / f"{TMP_PREFIX}{os.getpid()}"
            staging.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write to {path}: {e.strerror or e}") from None
        out = OutputDir(path, staging, partial, resumed=resume)
        try:
            yield out
            _finalize(out, record, old_files, old_tree)
        except OSError as e:
            raise OutputError(f"cannot write to {path}: {e.strerror or e} ({e.filename or path})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException as e:
        if (fresh or marker_written) and not (out and out.finalizing) and not _has_work(path / PARTIAL):
            # A run that failed before keeping any work leaves the folder as it found it.
            shutil.rmtree(path / PARTIAL, ignore_errors=True)
            if fresh:
                for name in (MARKER, LOCK):
                    with contextlib.suppress(OSError):
                        (path / name).unlink()
                if created:
                    with contextlib.suppress(OSError):
                        path.rmdir()
            else:
                with contextlib.suppress(OSError):
                    _write_json_atomic(path / MARKER, marker)
        if isinstance(e, KeyboardInterrupt) and not str(e) and _has_work(path / PARTIAL):  # How to go on.
            raise KeyboardInterrupt(f"the work done is kept in {path}: run the command again with --resume") from None
        raise
    finally:
        os.close(lock_fd)


def _finalize(out: OutputDir, record: dict, old_files: list[str], old_tree: list[str]):
    new = sorted(p.name for p in out.staging.iterdir())
    new_tree = _tree(out.staging)
    ours = set(old_tree)

    def clashes(entry: str) -> bool:
        target = _inside(out.path, entry)
        if target is None:
            return True
        if not (target.exists() or target.is_symlink()):
            return False
        is_dir = target.is_dir() and not target.is_symlink()
        return entry not in ours or entry.endswith("/") != is_dir

    clash = [e for e in new_tree if clashes(e)]
    if clash:
        raise OutputError(f"{out.path} now holds {clash[0]}, which jaxoip did not write; results left unwritten")
    out.finalizing = True
    # While moving, every file either run wrote is listed, so a kill here leaves nothing unaccounted.
    _write_json_atomic(
        out.path / MARKER,
        {**record, "files": sorted(set(old_files) | set(new)), "tree": sorted(ours | set(new_tree))},
    )
    _remove_listed(out.path, old_tree)
    for name in new:
        _move_into(out.staging / name, out.path / name)
    shutil.rmtree(out.partial, ignore_errors=True)
    _write_json_atomic(out.path / MARKER, {**record, "status": "complete", "files": new, "tree": new_tree})


def _remove_listed(root: Path, tree: list[str]):
    """Removes the files `tree` lists under `root`, then its folders that are empty: a user's file keeps its folder."""
    folders = []
    for entry in tree:
        target = _inside(root, entry)
        if target is None or entry.split("/")[0] in _OURS:
            continue
        if entry.endswith("/"):
            folders.append(target)
        elif target.is_symlink() or target.is_file():
            target.unlink()
        elif "/" not in entry.rstrip("/") and target.is_dir():
            folders.append(target)  # A top-level folder of an old marker: refused before, unless empty.
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # Only when empty.


def _move_into(src: Path, dst: Path):
    """Moves `src` to `dst`; a folder into an existing folder entry by entry (it may hold a user's files)."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in sorted(src.iterdir()):
            _move_into(child, dst / child.name)
        return
    os.replace(src, dst)


def add_output_flags(parser, what: str = "output folder"):
    """--overwrite and --resume, shared by the commands."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace the complete jaxoip {what} at --out")
    parser.add_argument(
        "--resume", action="store_true", help="finish the interrupted run at --out, keeping its done work"
    )
