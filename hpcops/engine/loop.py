"""The daemon's loop: follow the lab's jobs, repair what a crash left, release queued runs.

One tick, in order (follow.py, then release.py):
  1. read the markers the jobs write into their run directories (no Slurm call at all);
  2. every `squeue_interval_s`, or sooner when something needs repair, ONE squeue for the whole
     lab (the safety net for jobs that die without writing, and the lookup by token after a crash);
  3. ONE sacct for the jobs that ended, for their final state and accounting (slurmdbd, not ctld);
  4. scancel what users asked to cancel;
  5. re-read fair-share usage when due;
  6. move pipelines on: open the steps whose parents completed, end those that never can;
  7. release queued runs into Slurm up to `max_active`.

Slurm unreachable means back off and retry; it never marks a run failed (docs/design.md,
decision 4).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hpcops.engine.follow import finalize_ended, read_markers, safety_net, send_cancels
from hpcops.engine.pipelines import advance
from hpcops.engine.release import refresh_usage, release
from hpcops.engine.state import LoopState, Parts
from hpcops.errors import SlurmUnreachable
from hpcops.transport.base import TransportError

log = logging.getLogger(__name__)

_BACKOFF_MAX_S = 60.0
# The shortest time between the starts of two ticks when a request wakes the loop.
_WOKEN_TICK_GAP_S = 0.2


def run_forever(p: Parts, s: LoopState, stop: threading.Event) -> None:
    woken = False
    while not stop.is_set():
        started = time.monotonic()
        try:
            tick(p, s, woken=woken)
        except Exception:
            # One bad tick must not end the daemon that every lab member depends on.
            log.exception("tick failed; the next one tries again")
        s.ticked.set()
        elapsed = time.monotonic() - started
        woken = s.wake.wait(max(0.0, p.config.daemon.tick_interval_s - elapsed))
        if woken:
            # Woken by a request: tick soon, but not once per request. A burst of submits
            # (issue 16: 4 users, 25 a second) then costs a few ticks a second, each
            # releasing what arrived meanwhile, instead of one full tick per submit.
            stop.wait(max(0.0, _WOKEN_TICK_GAP_S - (time.monotonic() - started)))
        s.wake.clear()


def _release_whole_changes(p: Parts, s: LoopState) -> None:
    """Release, never in the middle of a request changing several runs (LoopState.batch)."""
    with s.batch:
        release(p, s)


def tick(p: Parts, s: LoopState, *, woken: bool = False) -> None:
    """One pass of the loop; a step that fails is logged and the others still run, except that
    Slurm out of reach ends the tick (back-off: `slurm_callable` says when to try again).

    A tick a request woke (a submit, a cancel) reads the markers only if the last read is a
    tick_interval_s old: what the request wants is the release or the cancellation, and over
    SSH the markers' read is a command of its own, which a burst of submits would otherwise
    repeat every 0.2 s (and a laptop's submit waited for, before its sbatch)."""
    now = p.clock()
    if not woken or now - s.markers_read_at >= p.config.daemon.tick_interval_s:
        s.markers_read_at = now
        try:
            read_markers(p, s, p.store.in_slurm())
        except TransportError as exc:
            # Off the cluster the markers come over the same connection as Slurm's commands:
            # the cluster is out of reach, and the back-off below says when to try again.
            if slurm_callable(p, s):
                slurm_failed(p, s, SlurmUnreachable(str(exc)))
            return
        except Exception:
            # Whatever a job wrote must not stop the loop that follows everyone's jobs.
            log.exception("tick step 'markers' failed; the other steps go on")
    _steps_after_markers(p, s, now)


def _steps_after_markers(p: Parts, s: LoopState, now: float) -> None:
    if not slurm_callable(p, s):
        return
    s.ctld_answered = False
    # While slurmctld is out of reach, each retry the back-off allows is one squeue: a probe.
    poll_due = now >= s.next_squeue_at or not s.health.reachable
    # sacct's steps ask slurmdbd, not slurmctld: its outage backs off those steps alone, and
    # cancellations and releases go on (slurmctld may well answer).
    dbd = s.dbd_health.callable(now)
    steps: list[tuple[str, bool, Callable[[], None]]] = [
        ("poll", False, lambda: safety_net(p, s) if poll_due else None),
        ("final states", True, lambda: finalize_ended(p, s) if dbd else None),
        ("cancellations", False, lambda: send_cancels(p, s)),
        ("fair-share usage", True, lambda: refresh_usage(p, s) if dbd else None),
        ("pipelines", False, lambda: advance(p, s)),
        ("release", False, lambda: _release_whole_changes(p, s)),
    ]
    for name, asks_slurmdbd, step in steps:
        try:
            step()
        except SlurmUnreachable as exc:
            if asks_slurmdbd:
                if s.dbd_health.failed(now, exc.message, first_s=2.0, max_s=_BACKOFF_MAX_S):
                    log.warning("slurmdbd (sacct) unreachable, retrying with back-off: %s", exc)
                continue
            slurm_failed(p, s, exc)
            return
        except TransportError as exc:  # a run directory's file on an unreachable cluster
            slurm_failed(p, s, SlurmUnreachable(str(exc)))
            return
        except Exception:
            # One step's surprise (an unexpected Slurm message, a broken marker file) must
            # not starve the others: the rest of the tick still runs.
            log.exception("tick step %r failed; the other steps go on", name)
    if s.ctld_answered:
        slurm_ok(p, s)


def slurm_callable(p: Parts, s: LoopState) -> bool:
    return s.health.callable(p.clock())


def slurm_failed(p: Parts, s: LoopState, exc: SlurmUnreachable) -> None:
    if s.health.failed(p.clock(), exc.message, first_s=2.0, max_s=_BACKOFF_MAX_S):
        log.warning("Slurm unreachable, retrying with back-off: %s", exc)


def slurm_ok(p: Parts, s: LoopState) -> None:
    failures = s.health.failures
    if s.health.answered():
        log.info("Slurm reachable again after %d failed attempts", failures)
        s.next_squeue_at = 0.0  # catch up on everything that happened meanwhile
