"""Stream per-image explanations into shards: lock, resume, executor, unreadable images.

:func:`run_to_shards` is the plumbing between a dataset, an executor
(:mod:`featurelens.network.executor`) and shard storage (:mod:`featurelens.network.shards`). It knows
nothing of what an explanation is: ``explain(state, image_id, payload) -> ImageRecord`` does the work,
``state`` coming from ``factory()`` once per worker (for example the loaded model).

* The output folder is locked for the whole run (:class:`featurelens.network.locking.BundleLock`):
  a second run into it is refused.
* Each batch becomes one shard in ``out/shards/``, named by :attr:`Batch.key` (a hash of its ids), written as soon as the
  batch finishes: by the worker itself (``write_on="worker"``: the folder must be on storage that
  every machine sees) or by the driver from the bytes the worker returns (``write_on="driver"``).
* ``resume=True`` removes what a killed run left half-written and skips the ids already in complete
  shards, so a run killed (even with SIGKILL) and resumed stores the same records as an uninterrupted
  one; without it, a folder that already holds shards is refused.
* An image whose ``explain`` raises :class:`featurelens.errors.ImageLoadError` is skipped and listed
  (in the result and in ``out/skipped.json``), never aborting the run; any other exception propagates.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from featurelens.errors import BundleError, ImageLoadError
from featurelens.network.datasets import Skipped
from featurelens.network.executor import Batch, Executor, InProcessExecutor, Progress, RunStats
from featurelens.network.locking import BundleLock
from featurelens.network.shards import Encoding, ShardInfo, ShardStore, encode_shard, write_encoded

Explain = Callable[[Any, str, Any], Any]  # (state, image_id, payload) -> ImageRecord
SHARD_DIR = "shards"
SKIPPED_FILE = "skipped.json"


@dataclass
class ShardedRun:
    """What :func:`run_to_shards` did: the executor's stats, shards written, images skipped."""

    stats: RunStats
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    resumed_from: int = 0  # images already stored before this run

    @property
    def stored(self) -> int:
        return sum(len(s.ids) for s in self.shards)


@dataclass(frozen=True)
class _ShardJob:
    """The picklable per-batch function shipped to the workers."""

    explain: Explain
    root: str
    write_on: str
    encoding: str
    display_size: int

    def __call__(self, state: Any, batch: Batch) -> list[Any]:
        records, failed = [], []
        many = getattr(self.explain, "many", None)
        if many is not None:  # the whole batch at once: one result (a record or an ImageLoadError) per image
            outcomes = list(many(state, list(batch.ids), list(batch.payloads)))
        else:
            outcomes = []
            for image_id, payload in zip(batch.ids, batch.payloads):
                try:
                    outcomes.append(self.explain(state, image_id, payload))
                except ImageLoadError as exc:
                    outcomes.append(exc)
        for image_id, rec in zip(batch.ids, outcomes):
            if isinstance(rec, ImageLoadError):
                failed.append((image_id, str(rec)))
                continue
            if rec.image_id != image_id:
                raise BundleError(f"explain returned a record for {rec.image_id!r} when asked for {image_id!r}")
            records.append(rec)
        shard: Any = None
        if records:
            npz, index = encode_shard(batch.key, records, encoding=self.encoding, display_size=self.display_size)
            shard = write_encoded(self.root, batch.key, npz, index) if self.write_on == "worker" else (npz, index)
        # one result per image, as the executor expects: the shard rides on the first
        out: list[Any] = [None] * len(batch)
        out[0] = {"shard": shard, "failed": failed, "pid": os.getpid()}
        return out


def run_to_shards(
    items: Iterable[tuple[str, Any]],
    factory: Callable[[], Any],
    explain: Explain,
    out: str | Path,
    *,
    executor: Executor | None = None,
    batch_size: int = 8,
    resume: bool = False,
    write_on: Literal["worker", "driver"] = "worker",
    encoding: Encoding = "float16",
    display_size: int = 256,
    progress: Progress = False,
    command: str | None = None,
    lock: bool = True,
) -> ShardedRun:
    """Explain every item into shards under ``out`` (see the module docstring). ``lock=False``: the
    caller already holds the folder's :class:`~featurelens.network.locking.BundleLock`.

    ``explain`` may also have a method ``many(state, ids, payloads)`` returning one record (or
    :class:`~featurelens.errors.ImageLoadError`) per image; it is then called once per batch."""
    if write_on not in ("worker", "driver"):
        raise BundleError(f"write_on must be 'worker' or 'driver', got {write_on!r}")
    root = Path(out)
    shard_dir = root / SHARD_DIR
    executor = executor or InProcessExecutor()
    with BundleLock(root, command=command) if lock else contextlib.nullcontext():
        store = ShardStore(shard_dir)
        if resume:
            store.remove_incomplete()
            done = store.done_ids()
        elif store.keys():
            raise BundleError(f"{root} already holds {len(store.keys())} shards; resume the run, or choose an empty folder")
        else:
            done = set()
        job = _ShardJob(explain, str(shard_dir.resolve()), write_on, encoding, display_size)
        result = ShardedRun(RunStats(type(executor).__name__, getattr(executor, "workers", 1)), resumed_from=len(done))
        previous = read_skipped(root)

        def sink(batch: Batch, results: list[Any]) -> None:
            info = results[0]
            shard = info["shard"]
            if isinstance(shard, tuple):
                shard = write_encoded(shard_dir, batch.key, *shard)
            if shard is not None:
                result.shards.append(shard)
            result.skipped.extend(Skipped(image_id, reason) for image_id, reason in info["failed"])

        result.stats = executor.run(items, factory, job, sink, batch_size=batch_size, skip=done, progress=progress)
        # still-unreadable images from earlier runs stay listed; those now stored are dropped
        stored = ShardStore(shard_dir).done_ids()
        now = {s.where for s in result.skipped}
        listed = [s for s in previous if s.where not in now and s.where not in stored] + result.skipped
        _write_skipped(root, listed)
    return result


def read_skipped(root: Path) -> list[Skipped]:
    try:
        data = json.loads((root / SKIPPED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [Skipped(d["where"], d["reason"]) for d in data if isinstance(d, dict) and "where" in d]


def _write_skipped(root: Path, skipped: list[Skipped]) -> None:
    tmp = root / f".{SKIPPED_FILE}.tmp"
    tmp.write_text(json.dumps([{"where": s.where, "reason": s.reason} for s in skipped], indent=1), encoding="utf-8")
    tmp.replace(root / SKIPPED_FILE)
