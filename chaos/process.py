"""Process faults: kill, freeze/thaw, kill the main process, ask for memory growth.

Every signal goes through a pidfd: open ``os.pidfd_open(pid)``, then check that the
process behind it is the one selected (same start time, not a zombie), then
``signal.pidfd_send_signal``. Once the pidfd is open it pins that process, so a pid
reused between selection and signal is never hit, even at thousands of kills a second.

Choosing targets is seeded: candidates come in a stable order (sorted pids) and the
injector's RNG picks indices, so the same seed against the same tree picks the same
indices; the journal records both pids and indices.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
from collections.abc import Container
from dataclasses import dataclass

from chaos.errors import TargetError
from chaos.injector import Injector, Outcome, make_rng
from chaos.journal import Journal
from chaos.targets import Pids, ProcessRef, Targets, read_stat

__all__ = [
    "Freeze",
    "GrowMemory",
    "Kill",
    "KillMain",
    "PidFd",
    "choose",
    "parse_signal",
    "send_signal",
]


def parse_signal(value: str | int | signal.Signals) -> signal.Signals:
    """``"KILL"``, ``"SIGKILL"``, ``"kill"``, ``9`` or ``signal.SIGKILL`` → ``SIGKILL``."""
    if isinstance(value, signal.Signals):
        return value
    try:
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return signal.Signals(int(value))
        name = value.strip().upper()
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise TargetError(
            f"unknown signal {value!r}; use a name such as KILL, TERM, SEGV, ABRT, STOP or a number"
        ) from None


class PidFd:
    """An open pidfd on a process verified to be the one a :class:`ProcessRef` names."""

    def __init__(self, ref: ProcessRef, fd: int) -> None:
        self.ref = ref
        self._fd: int | None = fd

    @classmethod
    def open(cls, ref: ProcessRef) -> PidFd | None:
        """Open and verify; ``None`` if the process is gone, a zombie, or a pid successor."""
        try:
            fd = os.pidfd_open(ref.pid)
        except ProcessLookupError:
            return None
        # The pidfd now pins whatever process has this pid. If that process is the one
        # selected (same start time), every later signal through fd reaches it or nothing.
        stat = read_stat(ref.pid)
        if stat is None or stat.state in ("Z", "X") or stat.start_ticks != ref.start_ticks:
            os.close(fd)
            return None
        return cls(ref, fd)

    def send(self, sig: int) -> bool:
        """Signal the process; False if it has exited meanwhile."""
        if self._fd is None:
            raise ValueError("send() on a closed PidFd")
        try:
            signal.pidfd_send_signal(self._fd, sig)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidFd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def send_signal(ref: ProcessRef, sig: int) -> bool:
    """Signal exactly the process ``ref`` names; False (and no signal) if it is gone."""
    pidfd = PidFd.open(ref)
    if pidfd is None:
        return False
    with pidfd:
        return pidfd.send(sig)


@dataclass(frozen=True)
class Choice:
    """The targets one injection picked: (index in the candidate list, ref) pairs."""

    picked: list[tuple[int, ProcessRef]]
    candidates: int


def choose(
    targets: Targets,
    rng: random.Random,
    *,
    count: int = 1,
    fraction: float | None = None,
    exclude: Container[int] = frozenset(),
) -> Choice:
    """Pick ``count`` live targets (or ``fraction`` of them, at least one) at random.

    With a count, candidates are resolved lazily in random order, so picking one child
    of 2,000 costs a handful of ``/proc`` reads, not 2,000. Pids in ``exclude`` (children
    already sent SIGKILL, still dying) are left out before indexing, so indices do not
    depend on how fast the kernel reaps.
    """
    pids = [p for p in targets.candidates() if p not in exclude]
    if fraction is not None:
        live = [(i, ref) for i, pid in enumerate(pids) if (ref := targets.resolve(pid)) is not None]
        want = min(len(live), max(1, math.ceil(fraction * len(live)))) if live else 0
        return Choice(rng.sample(live, want), len(pids))
    pool = list(range(len(pids)))
    picked: list[tuple[int, ProcessRef]] = []
    while pool and len(picked) < count:
        j = rng.randrange(len(pool))
        i = pool[j]
        pool[j] = pool[-1]
        pool.pop()
        ref = targets.resolve(pids[i])
        if ref is not None:
            picked.append((i, ref))
    return Choice(picked, len(pids))


def _check_amount(count: int, fraction: float | None) -> None:
    if fraction is not None and not 0 < fraction <= 1:
        raise TargetError(f"fraction must be in (0, 1], got {fraction!r}")
    if fraction is None and (not isinstance(count, int) or count < 1):
        raise TargetError(f"count must be a positive integer, got {count!r}")


class Kill(Injector):
    """Send ``signal`` to ``count`` random targets (or a ``fraction`` of them).

    The default signal is SIGKILL; SIGTERM, SIGSEGV and SIGABRT model a clean shutdown
    request, a segfault and an abort.
    """

    kind = "kill"
    _DOOMED_MEMORY = 65536  # bound on SIGKILLed pids remembered while they die

    def __init__(
        self,
        targets: Targets,
        *,
        signal: str | int | signal.Signals = "KILL",
        count: int = 1,
        fraction: float | None = None,
        seed: int | random.Random | None = None,
        journal: Journal | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(journal=journal, kind=kind)
        _check_amount(count, fraction)
        self.targets = targets
        self.signal = parse_signal(signal)
        self.count = count
        self.fraction = fraction
        self.rng = make_rng(seed)
        self._target_name = targets.describe()
        self._params: dict[str, object] = {"signal": self.signal.name}
        self._params.update({"fraction": fraction} if fraction is not None else {"count": count})
        # pid -> start ticks of processes sent SIGKILL that are still in /proc: a dying
        # child is neither hit twice nor counted as a candidate.
        self._doomed: dict[int, int] = {}

    def describe(self) -> str:
        return self._target_name

    def apply(self) -> Outcome:
        self._forget_the_dead()
        choice = choose(
            self.targets, self.rng, count=self.count, fraction=self.fraction, exclude=self._doomed
        )
        hit: list[int] = []
        indices: list[int] = []
        vanished: list[int] = []
        for index, ref in choice.picked:
            if send_signal(ref, self.signal):
                hit.append(ref.pid)
                indices.append(index)
                if self.signal == signal.SIGKILL and len(self._doomed) < self._DOOMED_MEMORY:
                    self._doomed[ref.pid] = ref.start_ticks
            else:
                vanished.append(ref.pid)
        detail = {"pids": hit, "indices": indices, "candidates": choice.candidates}
        if vanished:
            detail["vanished"] = vanished
        outcome = "ok" if hit else ("vanished" if vanished else "no-target")
        return Outcome(outcome, self._target_name, self._params, detail)

    def _forget_the_dead(self) -> None:
        """Drop doomed pids that are gone from /proc (reaped) or now name another process."""
        for pid, ticks in list(self._doomed.items()):
            stat = read_stat(pid)
            if stat is None or stat.start_ticks != ticks:
                del self._doomed[pid]


class KillMain(Kill):
    """Signal a worker's main process (default SIGKILL), identified when this is made."""

    kind = "kill-main"

    def __init__(
        self,
        pid: int | ProcessRef,
        *,
        signal: str | int | signal.Signals = "KILL",
        journal: Journal | None = None,
    ) -> None:
        label = f"main {pid.pid if isinstance(pid, ProcessRef) else pid}"
        super().__init__(Pids([pid], label=label), signal=signal, journal=journal)


class GrowMemory(Kill):
    """Ask targets to grow their memory: they must have called
    :func:`chaos.memory.install_grow_hook` (which listens on SIGUSR2 by default)."""

    kind = "grow-memory"

    def __init__(
        self,
        targets: Targets,
        *,
        signal: str | int | signal.Signals = "USR2",
        count: int = 1,
        fraction: float | None = None,
        seed: int | random.Random | None = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(
            targets, signal=signal, count=count, fraction=fraction, seed=seed, journal=journal
        )


class Freeze(Injector):
    """SIGSTOP ``count`` targets (or a ``fraction``) and SIGCONT them ``duration`` s later.

    The pidfd stays open while a process is frozen, so the thaw reaches the same process.
    Thaws run on a timer thread and are journaled as kind ``"thaw"``; :meth:`close` (or
    leaving the ``with`` block) thaws everything still frozen at once.
    """

    kind = "freeze"

    def __init__(
        self,
        targets: Targets,
        *,
        duration: float,
        count: int = 1,
        fraction: float | None = None,
        seed: int | random.Random | None = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(journal=journal)
        _check_amount(count, fraction)
        if not duration > 0:
            raise TargetError(f"freeze duration must be > 0 seconds, got {duration!r}")
        self.targets = targets
        self.duration = float(duration)
        self.count = count
        self.fraction = fraction
        self.rng = make_rng(seed)
        self._lock = threading.Lock()
        self._frozen: dict[int, PidFd] = {}
        self._timers: list[threading.Timer] = []
        self._target_name = targets.describe()

    def describe(self) -> str:
        return self._target_name

    @property
    def frozen(self) -> list[int]:
        """Pids currently frozen by this injector."""
        with self._lock:
            return sorted(self._frozen)

    def apply(self) -> Outcome:
        choice = choose(self.targets, self.rng, count=self.count, fraction=self.fraction)
        stopped: list[PidFd] = []
        vanished: list[int] = []
        for _, ref in choice.picked:
            pidfd = PidFd.open(ref)
            if pidfd is not None and pidfd.send(signal.SIGSTOP):
                stopped.append(pidfd)
            else:
                vanished.append(ref.pid)
                if pidfd is not None:
                    pidfd.close()
        if stopped:
            timer = threading.Timer(self.duration, self._thaw, args=(stopped,))
            timer.daemon = True
            with self._lock:
                self._frozen.update((p.ref.pid, p) for p in stopped)
                self._timers = [t for t in self._timers if t.is_alive()] + [timer]
            timer.start()
        detail: dict[str, object] = {
            "pids": [p.ref.pid for p in stopped],
            "indices": [i for i, ref in choice.picked if ref.pid not in vanished],
            "candidates": choice.candidates,
        }
        if vanished:
            detail["vanished"] = vanished
        outcome = "ok" if stopped else ("vanished" if vanished else "no-target")
        params = {"duration": self.duration, "count": self.count, "fraction": self.fraction}
        return Outcome(outcome, self._target_name, params, detail)

    def _thaw(self, batch: list[PidFd]) -> None:
        thawed: list[int] = []
        gone: list[int] = []
        for pidfd in batch:
            with self._lock:
                owned = self._frozen.pop(pidfd.ref.pid, None) is pidfd
            if not owned:
                continue  # thawed already by close()
            (thawed if pidfd.send(signal.SIGCONT) else gone).append(pidfd.ref.pid)
            pidfd.close()
        if thawed or gone:
            self.journal.record(
                "thaw",
                self._target_name,
                "ok" if thawed else "vanished",
                detail={"pids": thawed, "vanished": gone} if gone else {"pids": thawed},
            )

    def thaw_all(self) -> None:
        """Thaw every process this injector still holds frozen, now."""
        with self._lock:
            timers, self._timers = self._timers, []
            batch = list(self._frozen.values())
        for timer in timers:
            timer.cancel()
        self._thaw(batch)

    def close(self) -> None:
        self.thaw_all()
