"""The last two YAML readers that used yaml.safe_load now go through hpcops.yamlio: `.dvc` files
from members' repositories and the client config. An alias bomb ("billion laughs": a few hundred
bytes of nested aliases that safe_load turns into a structure whose walk never ends) is refused
before anything is built from it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpcops.client.config import load_client_config
from hpcops.data.versions import DataVersionError, parse_dvc_file
from hpcops.errors import ConfigError

MD5 = "0123456789abcdef0123456789abcdef"


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# ─── .dvc files ────────────────────────────────────────────────────────────────────────────────


def test_a_dvc_file_with_an_alias_bomb_is_refused_quickly() -> None:
    text = f"outs:\n- md5: {MD5}.dir\n  size: 10\n  nfiles: 2\n  path: ds\n" + _alias_bomb()
    started = time.monotonic()
    with pytest.raises(DataVersionError, match=r"ds\.dvc at 0123abcd.*alias"):
        parse_dvc_file(text, "ds.dvc at 0123abcd")
    assert time.monotonic() - started < 1


def test_a_dvc_file_whose_output_is_an_alias_is_refused() -> None:
    text = f"x: &out {{md5: {MD5}, size: 1, path: f}}\nouts:\n- *out\n"
    with pytest.raises(DataVersionError, match=r"alias|anchor"):
        parse_dvc_file(text, "f.dvc")


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (f"outs:\n- !!python/object:os.system {{md5: {MD5}}}\n", "tag"),
        (f"outs:\n- md5: {MD5}\n  md5: {MD5}\n  path: f\n", "duplicate key"),
        ("outs: [\n", "not valid YAML"),
        ("outs: " + "[" * 40 + "]" * 40 + "\n", "nesting"),
    ],
)
def test_a_hostile_dvc_file_is_a_data_version_error(text: str, phrase: str) -> None:
    with pytest.raises(DataVersionError, match=phrase):
        parse_dvc_file(text, "f.dvc")


def test_an_all_digit_md5_survives_yaml_12_scalars() -> None:
    # DVC writes md5s unquoted; one made of decimal digits only reads as an integer.
    digits = "01234567890123456789012345678901"
    md5, size, nfiles = parse_dvc_file(
        f"outs:\n- md5: {digits}\n  size: 3\n  hash: md5\n  path: f\n", "f.dvc"
    )
    assert (md5, size, nfiles) == (digits, 3, 1)


# ─── the client config ─────────────────────────────────────────────────────────────────────────


def _client_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    monkeypatch.setenv("HPCOPS_CONFIG", str(path))


def test_a_client_config_with_an_alias_bomb_is_refused_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _client_config(tmp_path, monkeypatch, "remotes: {}\n" + _alias_bomb())
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"(?s)config\.yaml.*anchors and aliases"):
        load_client_config()
    assert time.monotonic() - started < 1


def test_a_client_config_alias_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "remotes:\n  a: &r {host: login.example.edu}\n  b: *r\n"
    _client_config(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError, match=r"alias|anchor"):
        load_client_config()


def test_a_huge_client_config_is_refused_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    with path.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    monkeypatch.setenv("HPCOPS_CONFIG", str(path))
    with pytest.raises(ConfigError, match="limit is 1048576 bytes"):
        load_client_config()


def test_a_client_config_reads_yaml_12_scalars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # YAML 1.1 would read `on` as true; the remote is named "on".
    _client_config(tmp_path, monkeypatch, "default_remote: 'on'\nremotes:\n  on: {host: h}\n")
    config = load_client_config()
    assert config.remote(None) == ("on", config.remotes["on"])
