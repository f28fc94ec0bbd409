"""DVC-versioned data, staged onto scratch once per content.

    submit (daemon)   versions.py  read each target's .dvc file at the run's commit, from the
                                   code mirror: its md5 is the data version the run records
    job (stager)      stage.py     fetch what the lab's cache lacks with DVC (one fetch per
                                   version, under a lock), verify it, and give the run its own
                                   read-only copy of exactly that version
    cache             cache.py     content-addressed objects (DVC's own layout), views, gc

The version is known before any byte moves, so a run is tagged with its data even if staging
fails, and a version already in the cache costs no network at all.
"""
