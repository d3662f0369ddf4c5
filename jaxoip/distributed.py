"""Runs past one process with JAX's distributed runtime: one mesh over every device of every process.

`start` joins the processes (flags, or JAX's own Slurm / Open MPI detection) before any backend starts;
the OIP search then shards its (map x start) batch over all devices of all processes, each process
building only its part (`global_batch`) and the results gathered once (`gather`). Every process keeps
the same host-side state, so the phases around the search run alike everywhere, and only process 0
(`is_main`) writes files and prints. A process that stops early tells the others (`agree`), and a
process that dies or never joins ends the run everywhere within `DistributedConfig.distributed_timeout`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
from jaxtyping import Shaped

from jaxoip._io import prepare_output
from jaxoip.errors import JaxoipError

DEFAULT_TIMEOUT = 300  # Seconds: the bound for a process that never joins or dies.


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run; all None: JAX's cluster detection, else one process."""

    coordinator: str | None = dataclasses.field(
        default=None, metadata={"help": "HOST:PORT of process 0, where the processes meet (with --num-processes)"}
    )
    num_processes: int | None = dataclasses.field(
        default=None, metadata={"help": "processes of the run, each started with its --process-id"}
    )
    process_id: int | None = dataclasses.field(
        default=None, metadata={"help": "this process's number, 0 to --num-processes - 1; process 0 writes"}
    )
    distributed_timeout: int = dataclasses.field(
        default=DEFAULT_TIMEOUT,
        metadata={"help": "seconds to wait for every process to join, and for a silent one before the run ends"},
    )

    def __post_init__(self):
        given = [v is not None for v in (self.coordinator, self.num_processes, self.process_id)]
        if any(given) and not all(given):
            raise JaxoipError("give --coordinator, --num-processes and --process-id together, or none of them")
        if self.coordinator is not None and not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", self.coordinator):
            raise JaxoipError(f"--coordinator must be HOST:PORT, got {self.coordinator!r}")
        if self.num_processes is not None and self.num_processes < 1:
            raise JaxoipError(f"--num-processes must be at least 1, got {self.num_processes}")
        if self.process_id is not None and not 0 <= self.process_id < self.num_processes:
            raise JaxoipError(f"--process-id must be 0 to {self.num_processes - 1}, got {self.process_id}")
        if not 1 <= self.distributed_timeout <= 3600:
            raise JaxoipError(f"--distributed-timeout must be 1 to 3600 seconds, got {self.distributed_timeout}")


def _cluster_present() -> bool:
    """Whether JAX's automatic detection would find a multi-process Slurm or Open MPI job around us (their
    environment variables only: the cloud detectors may ask the network, too slow for every plain run)."""
    from jax._src import clusters

    for env in (clusters.SlurmCluster, clusters.OmpiCluster):
        if env.is_env_present():
            try:
                return int(env.get_process_count()) > 1
            except Exception:  # noqa: BLE001 - a partial environment: let JAX's own initialize decide.
                return True
    return False


def _backend_started() -> bool:
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(xla_bridge, "_backends", None))


_timeout = DEFAULT_TIMEOUT


def start(cfg: DistributedConfig) -> bool:
    """Joins the multi-process run `cfg` describes (or that JAX detects); True when there is more than one
    process. A plain run (no flags, no cluster) stays one process and starts nothing.

    Must come before anything starts JAX's backend. Every process waits at most `cfg.distributed_timeout`
    seconds for the others; past it, one line naming the cause.
    """
    global _timeout
    if cfg.coordinator is None and not _cluster_present():
        return False
    import jax

    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if _backend_started():
        raise JaxoipError("a multi-process run must join the others before JAX starts; start it from the command")
    _timeout = cfg.distributed_timeout
    _one_line_output(cfg)
    where = f" at {cfg.coordinator}" if cfg.coordinator else ""
    try:
        with _one_line_on_loss(cfg):
            jax.distributed.initialize(
                cfg.coordinator,
                cfg.num_processes,
                cfg.process_id,
                initialization_timeout=cfg.distributed_timeout,
                heartbeat_timeout_seconds=cfg.distributed_timeout,
                shutdown_timeout_seconds=min(cfg.distributed_timeout, 30),
            )
    except Exception as e:  # noqa: BLE001 - the runtime raises several types; one line for all.
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        # JAX's runtime cannot hand its status to a Python callback (`_one_line_on_loss`): nothing to add then.
        why = "" if "bad_cast" in first else f": {first[:160]}"
        who = f"process {cfg.process_id} of {cfg.num_processes}" if cfg.process_id is not None else "this process"
        raise JaxoipError(
            f"{who} could not join the run{where} within --distributed-timeout {cfg.distributed_timeout} s "
            f"(a process missing, or a wrong --coordinator){why}"
        ) from None
    return jax.process_count() > 1


# Passes a stream of this process on (fd 0 in, the original stream out), piece by piece (tqdm's `\r` too),
# without Gloo's connection notices; when JAX's runtime ends the process because the run lost a process (its
# C++ fatal log and stack trace, or a `terminate`), writes one line (argv[1]) instead.
_FILTER = r"""
import os, re, sys
message, out, held, fatal, buf = sys.argv[1], sys.stdout.buffer, [], False, b""
markers = (b"detected fatal errors", b"terminate called", b"Check failure stack trace", b"std::bad_cast")
def piece(p):
    global fatal, held
    if fatal or p.startswith(b"[Gloo] Rank"):
        return
    if any(m in p for m in markers):
        fatal, held = True, []
    elif re.match(rb"[IWEF]\d{4} ", p):
        held.append(p)  # The runtime's own log: shown unless it starts a fatal report.
    else:
        out.write(b"".join(held) + p)
        out.flush()
        held = []
while chunk := os.read(0, 65536):
    *parts, buf = re.split(rb"(?<=[\r\n])", buf + chunk)
    for p in parts:
        piece(p)
piece(buf)
out.write(b"".join(held) + (message.encode() + b"\n" if fatal and message else b""))
out.flush()
"""


def _filtered(fd: int, message: str = ""):
    """Routes this process's file descriptor `fd` (1 or 2) through `_FILTER`."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    original = os.dup(fd)
    filt = subprocess.Popen([sys.executable, "-c", _FILTER, message], stdin=subprocess.PIPE, stdout=original)
    os.dup2(filt.stdin.fileno(), fd)
    filt.stdin.close()
    os.close(original)


def _one_line_output(cfg: DistributedConfig):
    """Standard output without Gloo's notices, and a standard error on which a run that loses a process ends
    with one line (JAX's runtime aborts with a C++ stack trace otherwise)."""
    who = f"process {cfg.process_id}" if cfg.process_id is not None else "this process"
    _filtered(1)
    _filtered(
        2,
        f"error: {who} stops: the run lost a process that died, hung or never joined within "
        f"--distributed-timeout {cfg.distributed_timeout} s; start the run again (with --resume to keep its work)",
    )


@contextlib.contextmanager
def _one_line_on_loss(cfg: DistributedConfig):
    """While JAX joins the run: its runtime client gets a Python callback for a lost process. JAX cannot call
    it (no conversion of its status), so the loss raises `std::bad_cast` where JAX would abort: a joining
    process that times out then raises a Python error (one line from `start`), and a later loss ends the
    process with a `terminate` that `_one_line_output` turns into one line."""
    from jax._src import distributed as jax_distributed

    runtime = jax_distributed._jax
    original = runtime.get_distributed_runtime_client

    def lost(*_):  # Never reached in JAX 0.10: see above.
        os._exit(2)

    def client(*args, **kwargs):
        kwargs.setdefault("missed_heartbeat_callback", lost)
        return original(*args, **kwargs)

    runtime.get_distributed_runtime_client = client
    try:
        yield
    finally:
        runtime.get_distributed_runtime_client = original


def process_count() -> int:
    """The processes of the run: 1 unless `start` joined several (never starts JAX's backend itself)."""
    if "jax" not in sys.modules:
        return 1
    import jax

    return jax.process_count() if jax.distributed.is_initialized() else 1


def process_index() -> int:
    if process_count() == 1:
        return 0
    import jax

    return jax.process_index()


def is_main() -> bool:
    """Whether this process writes the outputs and prints: process 0, or the only one."""
    return process_index() == 0


class _Watchdog:
    """Ends this process with one line when a collective step outlasts the timeout: a peer died or hung."""

    def __init__(self, what: str):
        self.what = what
        self.timer = threading.Timer(_timeout, self._expire)
        self.timer.daemon = True

    def _expire(self):
        print(
            f"error: process {process_index()} waited {_timeout} s for the others at {self.what}: a process died "
            "or hung; resume the run with --resume",
            file=sys.stderr,
            flush=True,
        )
        os._exit(3)

    def __enter__(self):
        if process_count() > 1:
            self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


def watched(what: str) -> _Watchdog:
    """A context in which this process waits for the others at most the run's timeout (see `_Watchdog`)."""
    return _Watchdog(what)


def _allgather_bytes(data: bytes, what: str, watch: bool = True) -> list[bytes]:
    """Every process's `data` (any lengths), in process order: two collectives. `watch`: bounded by the run's
    timeout (without: a step whose peers may work longer, e.g. train; a dead peer still ends it by heartbeat)."""
    from jax.experimental import multihost_utils

    with watched(what) if watch else contextlib.nullcontext(), _lost_as_error(what):
        sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int64))).reshape(-1)
        # A power of two: few distinct shapes, so few compiled gathers.
        size = 1 << max(4, int(np.max(sizes)) - 1).bit_length()
        buf = np.zeros(size, np.uint8)
        buf[: len(data)] = np.frombuffer(data, np.uint8)
        rows = np.asarray(multihost_utils.process_allgather(buf[None], tiled=True))
    return [bytes(rows[i, : int(n)]) for i, n in enumerate(sizes)]


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}


@contextlib.contextmanager
def _lost_as_error(what: str):
    """A collective that fails (a peer's connection gone) is one line naming the step, not a traceback."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - Gloo and the runtime raise several types.
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise JaxoipError(
            f"process {process_index()} lost the others at {what} ({first[:160]}); a process died: start the run "
            "again (with --resume to keep its work)"
        ) from None


def check_same(settings: dict) -> None:
    """Refuses a run whose processes were given different settings (e.g. another --maps on one of them)."""
    if process_count() == 1:
        return
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    digests = [d.decode() for d in _allgather_bytes(digest.encode(), "the settings check")]
    differ = [i for i, d in enumerate(digests) if d != digests[0]]
    if differ:
        who = f"process {differ[0]} was" if len(differ) == 1 else f"processes {', '.join(map(str, differ))} were"
        raise JaxoipError(
            f"{who} started with settings that differ from process 0's; give every process the same options"
        )


def agree(error: BaseException | None, what: str, watch: bool = True) -> None:
    """A step every process passes or none: re-raises this process's `error`, and stops the others with one
    line naming the process that failed (its own message says why). `watch`: as for `_allgather_bytes` (without,
    the others may wait longer than the run's timeout, e.g. while process 0 writes files)."""
    if process_count() == 1:
        if error is not None:
            raise error
        return
    votes = _allgather_bytes(b"0" if error is None else b"1", what, watch)
    failed = [i for i, b in enumerate(votes) if b == b"1"]
    if error is not None:
        raise error
    if failed:
        raise JaxoipError(f"process {failed[0]} stopped at {what} (its own message says why); this one stops too")


def from_main(arrays: dict[str, Shaped[np.ndarray, "*shape"]], what: str) -> dict[str, Shaped[np.ndarray, "*shape"]]:
    """Process 0's `arrays` on every process (the others pass anything), e.g. what only process 0 can read."""
    if process_count() == 1:
        return arrays
    return _unpack(_allgather_bytes(_pack(arrays) if is_main() else b"", what)[0])


def all_arrays(
    arrays: dict[str, Shaped[np.ndarray, "*shape"]], what: str, watch: bool = True
) -> list[dict[str, Shaped[np.ndarray, "*shape"]]]:
    """Every process's `arrays`, in process order, bit for bit (see `_allgather_bytes` for `watch`)."""
    if process_count() == 1:
        return [arrays]
    return [_unpack(data) for data in _allgather_bytes(_pack(arrays), what, watch)]


def devices() -> list:
    """The devices of the run: every process's while several take part, else this process's own (also after
    `leave`, when JAX still lists the others' devices)."""
    import jax

    return jax.devices() if process_count() > 1 else jax.local_devices()


def leave() -> None:
    """Ends this process's part in the run, every process at once (a barrier): process 0 then goes on alone on
    its own devices (`process_count` is 1) while the others may exit."""
    if process_count() == 1:
        return
    import jax

    with watched("leaving the run"), _lost_as_error("leaving the run"):
        jax.distributed.shutdown()


def replicated(tree, mesh):
    """Every leaf of `tree` (the same on every process) as a global array replicated over `mesh`."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), tree)


def global_batch(x: Shaped[np.ndarray, "n ..."], sharding) -> object:
    """The global array of the batch `x` (the whole batch, on every process) sharded along its first axis,
    built from this process's rows only."""
    import jax

    rows = [idx[0] for idx in sharding.addressable_devices_indices_map(x.shape).values()]
    lo, hi = min(r.start or 0 for r in rows), max(x.shape[0] if r.stop is None else r.stop for r in rows)
    return jax.make_array_from_process_local_data(sharding, x[lo:hi], x.shape)


def gather(tree):
    """The global arrays of `tree` as NumPy arrays on every process, in one exchange of every process's shards."""
    import jax

    leaves, treedef = jax.tree.flatten(tree)
    mine = {}
    for i, leaf in enumerate(leaves):
        seen = set()
        for s, shard in enumerate(leaf.addressable_shards):
            start = tuple(sl.start or 0 for sl in shard.index)
            if start not in seen:  # A replicated leaf's copies: one is enough.
                seen.add(start)
                mine[f"{i}/{s}/data"] = np.asarray(shard.data)
                mine[f"{i}/{s}/start"] = np.asarray(start, np.int64)
    full = [np.zeros(leaf.shape, leaf.dtype) for leaf in leaves]
    for data in _allgather_bytes(_pack(mine), "gathering the results"):
        part = _unpack(data)
        for key in part:
            if key.endswith("/data"):
                i = int(key.split("/")[0])
                start = part[key.removesuffix("data") + "start"]
                full[i][tuple(slice(a, a + n) for a, n in zip(start, part[key].shape))] = part[key]
    return jax.tree.unflatten(treedef, full)


# Options that say how a process joins, not what the run computes: not compared, not in the output's marker.
JOIN_OPTIONS = ("coordinator", "num_processes", "process_id", "distributed_timeout")


@contextlib.contextmanager
def main_output(*args, **kwargs):
    """`jaxoip._io.prepare_output(*args, **kwargs)` on process 0, None on the others, which write nothing.

    A folder process 0 refuses stops every process (`agree`).
    """
    error, out = None, None
    with contextlib.ExitStack() as stack:
        if is_main():
            try:
                out = stack.enter_context(prepare_output(*args, **kwargs))
            except (JaxoipError, OSError) as e:
                error = e
        agree(error, "the output folder")
        yield out
