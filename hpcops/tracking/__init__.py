"""MLflow records of every run: created when a run is queued, followed while its job runs
(directly, or relayed from a file store on shared scratch), closed with Slurm's accounting.

    records.py  what a record holds: tags, params, metrics, status (pure)
    server.py   the tracking server's few verbs; MLflow's exceptions stop there
    relay.py    the file store a job without network logs into, and reading what is new in it
    worker.py   the tracking thread: the outbox, the relay, back-off while the server is down
    jobfiles.py a job's logs and script uploaded without trusting them (link-free, bounded)
    forward.py  what a job relayed, forwarded to its record (new values, artifacts, cursors)
    attempts.py one record across a run's attempts: each one's figures and logs by its number
    parents.py  a sweep's parent run: made once, its points nested under it, the best point
    rerun.py    a new spec from a recorded one, with `--set` overrides (pure)

MLflow is imported only inside the functions that talk to it, so `hpcops --help` stays fast.
"""
