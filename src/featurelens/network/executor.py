"""Run per-image work over batches, in-process (the default, no Ray needed) or on Ray.

The executor knows nothing of what the work is (clustering, effects, shards). It is given:

* ``items``: ``(image_id, payload)`` pairs; ids are unique, payloads picklable (for example paths);
* a **worker factory**, called once per worker to build its state (for example: load the model);
  on Ray each worker is an actor, so the factory runs once per actor process;
* a **batch function** ``fn(state, batch) -> list`` with one result per image of the batch;
* a **sink** ``sink(batch, results)``, called on the driver once per finished batch, in completion order.

Guarantees:

* ids in ``skip`` (for example the images already in a bundle, for ``--resume``) are not run;
* a worker **process that dies** (crash, ``os._exit``, out-of-memory kill, lost node) has its batches
  run again on a fresh worker, up to ``max_retries`` times per batch;
  an ordinary exception raised by the batch function is a bug or bad input, not retried, and re-raised;
* the driver records finished batches and delivered ids: no batch reaches the sink twice, and an id
  is never delivered twice;
* a progress bar over images (tqdm, on stderr), or a callback ``progress(n_images)``.

Batches are formed from the items left after ``skip``, in the given order; :attr:`Batch.key` is a hash
of the batch's ids, so that a file named after it is the same on a retry (written again atomically,
never twice).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from featurelens.errors import FeaturelensError

S = TypeVar("S")
R = TypeVar("R")


class ExecutorError(FeaturelensError):
    """The work could not be run: Ray missing, a batch whose workers kept dying, bad items."""


@dataclass(frozen=True)
class Batch:
    """``ids[i]`` goes with ``payloads[i]``. ``index`` counts batches of this run from 0."""

    index: int
    ids: tuple[str, ...]
    payloads: tuple[Any, ...]

    @property
    def key(self) -> str:
        """12 hex digits of SHA-1 over the ids: stable across runs and retries."""
        return hashlib.sha1("\n".join(self.ids).encode("utf-8")).hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RunStats:
    """What one run did: images and batches delivered, ids skipped, batches retried after a worker died."""

    backend: str
    workers: int
    images: int = 0
    batches: int = 0
    skipped: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


BatchFn = Callable[[Any, Batch], Sequence[Any]]
Sink = Callable[[Batch, list[Any]], None]
Progress = bool | Callable[[int], None]


class Executor(Protocol):
    def run(self, items: Iterable[tuple[str, Any]], factory: Callable[[], Any], fn: BatchFn, sink: Sink, *,
            batch_size: int = 8, skip: Collection[str] = (), progress: Progress = False) -> RunStats: ...


def make_batches(items: Iterable[tuple[str, Any]], batch_size: int, skip: Collection[str] = ()) -> tuple[list[Batch], int]:
    """Split ``items`` (minus the ids in ``skip``) into batches; returns ``(batches, n_skipped)``."""
    if batch_size < 1:
        raise ExecutorError(f"batch_size must be at least 1, got {batch_size}")
    skip = set(skip)
    seen: set[str] = set()
    todo: list[tuple[str, Any]] = []
    n_skipped = 0
    for image_id, payload in items:
        if not isinstance(image_id, str):
            raise ExecutorError(f"image ids must be strings, got {image_id!r}")
        if image_id in seen:
            raise ExecutorError(f"image id {image_id!r} is given twice")
        seen.add(image_id)
        if image_id in skip:
            n_skipped += 1
        else:
            todo.append((image_id, payload))
    batches = [
        Batch(k, tuple(i for i, _ in todo[s: s + batch_size]), tuple(p for _, p in todo[s: s + batch_size]))
        for k, s in enumerate(range(0, len(todo), batch_size))
    ]
    return batches, n_skipped


class _Delivery:
    """Driver-side bookkeeping: each batch and each id reaches the sink at most once."""

    def __init__(self, sink: Sink, progress: Progress, total: int) -> None:
        self.sink = sink
        self.done: set[int] = set()
        self.ids: set[str] = set()
        self._bar = None
        self._cb: Callable[[int], None] | None = None
        if callable(progress):
            self._cb = progress
        elif progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="image", desc="images", file=sys.stderr)

    def deliver(self, batch: Batch, results: Sequence[Any]) -> bool:
        if batch.index in self.done:
            return False
        results = list(results)
        if len(results) != len(batch):
            raise ExecutorError(f"the batch function returned {len(results)} results for {len(batch)} images")
        twice = self.ids.intersection(batch.ids)
        if twice:
            raise ExecutorError(f"image ids delivered twice: {sorted(twice)[:5]}")
        self.sink(batch, results)
        self.done.add(batch.index)
        self.ids.update(batch.ids)
        if self._bar is not None:
            self._bar.update(len(batch))
        if self._cb is not None:
            self._cb(len(batch))
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class InProcessExecutor:
    """Everything in the calling process: one worker state, batches in order."""

    workers = 1

    def run(self, items: Iterable[tuple[str, Any]], factory: Callable[[], Any], fn: BatchFn, sink: Sink, *,
            batch_size: int = 8, skip: Collection[str] = (), progress: Progress = False) -> RunStats:
        t0 = time.perf_counter()
        batches, n_skipped = make_batches(items, batch_size, skip)
        stats = RunStats("in-process", 1, skipped=n_skipped)
        delivery = _Delivery(sink, progress, sum(len(b) for b in batches))
        try:
            if batches:
                state = factory()
                for b in batches:
                    delivery.deliver(b, fn(state, b))
                    stats.images += len(b)
                    stats.batches += 1
        finally:
            delivery.close()
        stats.seconds = time.perf_counter() - t0
        return stats


class _RayWorker(Generic[S]):
    """The actor body: the state built once by the factory, then one call per batch."""

    def __init__(self, factory: Callable[[], S], fn: BatchFn) -> None:
        # a factory that raises is an ordinary error (re-raised by each run), not a dead worker to retry
        self.error: BaseException | None = None
        try:
            self.state = factory()
        except Exception as exc:  # handed to the driver by run()
            self.error = exc
        self.fn = fn

    def run(self, batch: Batch) -> list[Any]:
        if self.error is not None:
            raise self.error
        return list(self.fn(self.state, batch))

    def pid(self) -> int:
        return os.getpid()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError("Ray is not installed; install the extra: pip install 'featurelens[distributed]'") from None
    return ray


class RayExecutor:
    """Batches on ``workers`` Ray actors (each ``cpus_per_worker`` CPUs), at most ``in_flight`` batches
    queued per actor.

    If Ray is not initialised yet, :meth:`run` starts a local instance (``num_cpus=workers *
    cpus_per_worker``, no dashboard) or joins the cluster at ``address`` (for example ``"HEAD:6379"``
    or ``"auto"``), and shuts it down at the end; an instance the caller started is left running.
    A batch whose actor dies is given to a fresh actor, at most ``max_retries`` times.
    """

    def __init__(self, workers: int = 2, *, address: str | None = None, cpus_per_worker: float = 1.0,
                 max_retries: int = 3, in_flight: int = 2, init_kwargs: dict[str, Any] | None = None) -> None:
        if workers < 1:
            raise ExecutorError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.max_retries = max_retries
        self.in_flight = max(1, in_flight)
        self.init_kwargs = dict(init_kwargs or {})

    def _ensure_ray(self) -> tuple[Any, bool]:
        ray = _import_ray()
        if self.address:
            _check_reachable(self.address)
        if ray.is_initialized():
            return ray, False
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, **self.init_kwargs}
        if self.address:
            kwargs.pop("include_dashboard")
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(f"cannot join the Ray cluster at {self.address}: {_first_line(exc)} "
                                    "(start it with `ray start --head`)") from None
        else:
            # "local": a new instance even if a `ray start` cluster on this machine left its address behind
            ray.init(address="local", num_cpus=max(1, round(self.workers * self.cpus_per_worker)), **kwargs)
        return ray, True

    def run(self, items: Iterable[tuple[str, Any]], factory: Callable[[], Any], fn: BatchFn, sink: Sink, *,
            batch_size: int = 8, skip: Collection[str] = (), progress: Progress = False) -> RunStats:
        t0 = time.perf_counter()
        batches, n_skipped = make_batches(items, batch_size, skip)
        stats = RunStats("ray", self.workers, skipped=n_skipped)
        if not batches:
            stats.seconds = time.perf_counter() - t0
            return stats
        ray, started = self._ensure_ray()
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        died = (RayActorError, WorkerCrashedError)
        actor_cls = ray.remote(_RayWorker).options(num_cpus=self.cpus_per_worker, max_restarts=0,
                                                   max_task_retries=0)
        n_actors = min(self.workers, len(batches))
        actors = [actor_cls.remote(factory, fn) for _ in range(n_actors)]
        queue: list[Batch] = list(reversed(batches))  # pop() from the end = in order
        attempts: dict[int, int] = {}
        pending: dict[Any, tuple[int, Batch]] = {}  # ref -> (actor slot, batch)
        load = [0] * n_actors
        delivery = _Delivery(sink, progress, sum(len(b) for b in batches))

        def submit(slot: int, batch: Batch) -> None:
            attempts[batch.index] = attempts.get(batch.index, 0) + 1
            pending[actors[slot].run.remote(batch)] = (slot, batch)
            load[slot] += 1

        try:
            while queue or pending:
                for slot in range(n_actors):
                    while queue and load[slot] < self.in_flight:
                        submit(slot, queue.pop())
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                slot, batch = pending.pop(ref)
                load[slot] -= 1
                try:
                    results = ray.get(ref)
                except RayTaskError as exc:  # the batch function raised: not a worker death
                    cause = exc.as_instanceof_cause()
                    raise cause from None
                except died as exc:
                    if "creation task" in str(exc):  # the actor could not even be built
                        hint = ""
                        if "No module named" in str(exc) or "failed to import" in str(exc):
                            hint = ("; the worker cannot import featurelens: install the same featurelens "
                                    "version on every machine of the cluster")
                        raise ExecutorError(f"a Ray worker could not start: {_first_line(exc)}{hint}") from None
                    if attempts[batch.index] > self.max_retries:
                        raise ExecutorError(
                            f"batch {batch.index} ({', '.join(batch.ids[:3])}{' ...' * (len(batch) > 3)}) "
                            f"failed {attempts[batch.index]} times: its worker died "
                            f"({type(exc).__name__}: {_first_line(exc)})"
                        ) from None
                    # the actor is gone: its other queued batches fail too; all go to a fresh actor
                    again = [batch] + [b for r, (s, b) in list(pending.items()) if s == slot]
                    for r in [r for r, (s, _) in pending.items() if s == slot]:
                        pending.pop(r)
                    load[slot] = 0
                    actors[slot] = actor_cls.remote(factory, fn)
                    stats.retries += len(again)
                    queue.extend(reversed(again))
                    continue
                if delivery.deliver(batch, results):
                    stats.images += len(batch)
                    stats.batches += 1
        finally:
            delivery.close()
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # an actor that is already gone
                    pass
            if started:
                ray.shutdown()
        stats.seconds = time.perf_counter() - t0
        return stats


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when a ``HOST:PORT`` address has nothing
    listening (``auto``, ``local`` and ``ray://`` addresses are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"cannot join the Ray cluster at {address}: nothing answers there ({exc.strerror or exc}); "
            "start it with `ray start --head` or check --ray-address"
        ) from None


def make_executor(ray: bool = False, *, address: str | None = None, workers: int | None = None,
                  **kwargs: Any) -> InProcessExecutor | RayExecutor:
    """The in-process executor, or a :class:`RayExecutor` when ``ray`` is true or ``address`` is given
    (``workers`` defaults to the number of CPUs of this machine)."""
    if not ray and address is None:
        return InProcessExecutor()
    return RayExecutor(workers or os.cpu_count() or 1, address=address, **kwargs)
