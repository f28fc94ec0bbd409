"""Before a submit: pin each spec's code to a commit and ship what the lab's mirror lacks.

One `code_have` question for all specs, then at most one bundle per repository and commit,
uploaded over the call's own connection (SFTP on paramiko's connection, `cat` in a second
session of the user's OpenSSH master, or a plain copy on the login node). The submit request
then names each bundle; the daemon takes it in.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcops.api.protocol import LineClient
from hpcops.code.mirror import MAX_HAVE_QUERY
from hpcops.code.workspace import (
    PinnedCode,
    first_parent_history,
    pin,
    private_scratch,
    probe_indices,
    refine_indices,
    write_bundle,
)
from hpcops.spec import Code, Spec, spec_to_yaml


@dataclass
class Prepared:
    """One spec ready for the submit request, and what shipping it cost."""

    spec: Spec
    source: str
    code: dict[str, Any] | None = None  # the request's per-spec `code`
    shipped: dict[str, Any] = field(default_factory=dict)  # for the user: commit, bytes

    def request_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {"yaml": spec_to_yaml(self.spec), "source": self.source}
        if self.code is not None:
            item["code"] = self.code
        return item


def prepare(
    client: LineClient, specs: list[tuple[Spec, str]], *, allow_dirty: bool, quiet: bool
) -> list[Prepared]:
    """Pin and ship the code of every spec that names a local repository."""
    prepared = [Prepared(spec, source) for spec, source in specs]
    local = [p for p in prepared if p.spec.code is not None and not p.spec.code.is_url]
    if not local:
        return prepared
    with private_scratch() as tmp:
        scratch = Path(tmp)
        pinned: dict[int, PinnedCode] = {}
        for i, p in enumerate(local):
            assert p.spec.code is not None
            pinned[i] = pin(
                Path(p.spec.code.repo),
                p.spec.code.commit,
                allow_dirty=allow_dirty,
                scratch=scratch / f"snapshot-{i}",
                source=p.source,
            )
        haves, incoming = _negotiate(client, [pinned[i] for i in range(len(local))])
        sent: dict[str, dict[str, Any]] = {}  # checkout commit -> what was sent for it
        for i, p in enumerate(local):
            pc = pinned[i]
            if pc.checkout not in sent:
                sent[pc.checkout] = _ship(client, pc, haves[i], incoming, scratch / f"b{i}", quiet)
            bundle = sent[pc.checkout].pop("bundle", None)  # a bundle is taken in once
            p.spec = p.spec.model_copy(update={"code": Code(repo=str(pc.repo), commit=pc.commit)})
            p.code = {"bundle": bundle, "checkout": pc.checkout, "dirty": pc.dirty}
            p.shipped = {
                "repo": str(pc.repo),
                "commit": pc.commit,
                "dirty": pc.dirty,
                "bundle_bytes": sent[pc.checkout]["bytes"] if bundle else 0,
            }
    return prepared


def _negotiate(client: LineClient, pinned: list[PinnedCode]) -> tuple[list[set[str]], str]:
    """What the mirror holds of each pinned commit's history, in at most two questions for all
    of them; and the folder to put bundles in. The checkouts themselves are asked first: if
    held, nothing travels. Each repository gets only its own commits back: a bundle can
    exclude only commits its repository knows."""
    histories = [first_parent_history(pc) for pc in pinned]
    have: set[str] = set()
    incoming = ""
    rounds: list[list[str]] = [
        [pc.checkout for pc in pinned] + [h[i] for h in histories for i in probe_indices(len(h))]
    ]
    for round_no in range(2):
        asked = list(dict.fromkeys(rounds[round_no]))[:MAX_HAVE_QUERY]
        answer = client.call("code_have", commits=asked)
        have |= set(answer["have"])
        incoming = str(answer["incoming"])
        if round_no == 0:
            rounds.append([h[i] for h in histories for i in refine_indices(h, have)])
            if not rounds[1]:
                break
    return [have & {*h, pc.checkout} for pc, h in zip(pinned, histories, strict=True)], incoming


def _ship(
    client: LineClient, pc: PinnedCode, have: set[str], incoming: str, work: Path, quiet: bool
) -> dict[str, Any]:
    work.mkdir(parents=True)
    path = write_bundle(pc, have, work / "code.bundle", work)
    if path is None:
        return {"bytes": 0}
    size = path.stat().st_size
    if not quiet:
        print(
            f"hpcops: shipping {pc.repo} at {pc.checkout[:12]}"
            f"{' (dirty)' if pc.dirty else ''}: {_human(size)}",
            file=sys.stderr,
        )
    name = f"{secrets.token_hex(16)}.bundle"  # unguessable: incoming/ cannot be listed
    client.upload(path, incoming, name)
    return {"bundle": name, "bytes": size}


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
