"""Scheduled retraining: schedules that queue a fresh run of a spec on a cron or an interval.

    timing.py   pure: cron and time-zone checks, triggers, catch-up and overlap decisions
                (imported by spec.py, so it sits at the spec's layer and imports only errors)
    refs.py     the one place where a firing resolves a spec's moving references
    service.py  the daemon's side: APScheduler, the firing path, pause/resume/remove/run-now

Our own tables (store/models.py: Schedule, Firing) are the record of what exists and what
happened; APScheduler's job store, in the same database, only drives the timing.
"""
