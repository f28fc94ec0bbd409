"""Scheduled retraining: schedules that queue a fresh run of a spec on a cron, an interval, or
when its DVC-tracked data changes.

    hpcops/cadence.py (outside this package, below spec and config, which import it)
                   pure: cron and time-zone checks, triggers, catch-up and overlap decisions
    datachange.py  pure: whether an on-data-change check fires, given the data versions now
                   and those of the schedule's earlier firings
    settings.py    what `schedule add` asks for, checked: the settings a schedule is stored with
    service.py     the daemon's side: APScheduler, the firing path, data checks,
                   pause/resume/remove/run-now

A firing resolves the spec's moving references (a code branch, a data target's rev) in the
engine's prepare_run, through the lab's code mirror; a data check in current_data, the
same way, without queueing.

Our own tables (store/models.py: Schedule, Firing) are the record of what exists and what
happened; APScheduler's job store, in the same database, only drives the timing.
"""
