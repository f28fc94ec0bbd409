"""The engine's offline tier is a package: its conftest is then imported as `engine.conftest`, not
as a second top-level `conftest` that would shadow tests/integration/conftest.py for the
integration modules' `from conftest import ...` when both tiers are collected together."""
