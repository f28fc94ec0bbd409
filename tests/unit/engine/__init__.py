"""The engine's offline tier: a run's whole life without Slurm.

    fakeslurm.py        FakeSlurm (a Transport answering sbatch/squeue/sacct/scancel/sinfo in the
                        captured 22.05 formats, run-directory files in memory), FakeClock,
                        DaemonCrash
    engine_harness.py   EngineHarness: the one place that builds the engine, plus the public
                        requests and store reads the tests use
    conftest.py         the `make_engine` fixture; no Slurm process may start; a fault point's
                        SIGKILL of this process raises DaemonCrash instead
    test_engine_*.py    the tests, by concern

A package, so that its conftest is imported as `engine.conftest`, not as a second top-level
`conftest` that would shadow tests/integration/conftest.py for the integration modules'
`from conftest import ...` when both tiers are collected together.
"""
