"""resourceVersion: the etcd mod_revision, tagged with the region that issued it and its epoch.

Layer: api. Pure.

Format `<revision>.<region tag>.<epoch>` (e.g. `1234.9f2c41ab.0`), opaque to clients. The region
tag comes from the region's etcd cluster id, and the epoch from the global control state (0 until
region failover exists). A version handed out by another region or an earlier epoch is never
mistaken for one of ours: `parse` reports it as foreign, and callers answer 409 (update) or
410 Expired (list, watch). "" and "0" keep their Kubernetes meanings (unset / any).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from . import errors

_INT64_MAX = 2**63 - 1  # etcd revisions are int64
_FORMAT = re.compile(r"^(\d+)\.([0-9a-f]{8})\.(\d+)$")


@dataclass
class VersionContext:
    """Shared by the replica's stores; `epoch` changes when the global epoch does (the replica
    then restarts its watch caches so that nothing keeps handing out old-epoch versions)."""

    region_tag: str  # 8 hex digits of the region's etcd cluster id
    epoch: int = 0

    @classmethod
    def for_cluster(cls, cluster_id: int, epoch: int = 0) -> VersionContext:
        return cls(region_tag=f"{cluster_id & 0xFFFFFFFF:08x}", epoch=epoch)

    def encode(self, revision: int) -> str:
        return f"{revision}.{self.region_tag}.{self.epoch}"


@dataclass(frozen=True)
class ParsedVersion:
    revision: int
    ours: bool  # issued by this region in this epoch


def parse(ctx: VersionContext, text: str) -> ParsedVersion:
    """Parse a non-empty, non-"0" resourceVersion; malformed -> 400 BadRequest."""
    revision, tag, epoch = _fields(text)
    return ParsedVersion(revision, ours=(tag == ctx.region_tag and epoch == ctx.epoch))


@functools.lru_cache(maxsize=4096)
def _fields(text: str) -> tuple[int, str, int]:
    """(revision, region tag, epoch). Cached: every create parses its namespace's version."""
    m = _FORMAT.match(text)
    if m is None:
        raise errors.bad_request(f"invalid resourceVersion {text!r}: not issued by this server")
    revision, tag, epoch = int(m.group(1)), m.group(2), int(m.group(3))
    if revision > _INT64_MAX:
        raise errors.bad_request(f"invalid resourceVersion {text!r}: out of range")
    return revision, tag, epoch


def revision_for_read(ctx: VersionContext, text: str | None) -> int | None:
    """For list/watch: None for ""/"0" (unset/any), the revision for ours, 410 for foreign."""
    if not text or text == "0":
        return None
    parsed = parse(ctx, text)
    if not parsed.ours:
        raise errors.gone(
            f"too old resource version: {text} was issued by another region or an earlier "
            "failover epoch"
        )
    return parsed.revision
