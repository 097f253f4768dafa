"""Shards: which keys a `--shard I/N` run handles, where its state lives, and when its run may recycle (pure).

A key's shard is a stable hash of its full UTF-8 bytes, modulo N: the same key is always in the
same shard for the same N (so each shard's hash cache stays valid from run to run), every key is
in exactly one shard, and the files of one big folder spread over all shards. The price of
hashing the full key is that nothing can be pruned by prefix: every shard walks the whole tree
(listing directories, but stat-ing and reading only its own files) and lists the whole prefix
(N shards make N times the LIST requests of one run, one per 1,000 keys each), keeping only its
own keys of each page (remote.RemoteListing).

State layout under `PREFIX/.s3backup/`:
- unsharded (and `--shard 0/1`): `hash-cache.sqlite.gz`, `attributes.sqlite.gz`, `uploads/`;
- shard I of N: the same names under `shards/N/I/`;
- each shard's outcome for one run: `runs/RUN_ID/shard-I-of-N.json` (+ `.candidates.jsonl.gz`),
  read by the final `s3backup recycle` step, which alone deletes data in a sharded run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import ConfigError
from .remote import STATE_DIR

#: A run id names the objects of one sharded run: letters, digits and `._-`, as a Job name or uid.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_SHARDS = 10_000


def shard_of(key: str, n: int) -> int:
    """The shard (0 ≤ shard < n) of a key relative to the prefix: blake2b of its UTF-8 bytes, mod n."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count`; `Shard(0, 1)` is the whole prefix (an unsharded run)."""

    index: int = 0
    count: int = 1

    @property
    def whole(self) -> bool:
        return self.count == 1

    def owns(self, key: str) -> bool:
        return self.count == 1 or shard_of(key, self.count) == self.index

    @property
    def state_dir(self) -> str:
        """Where this shard's own state lives, relative to the prefix (ends with `/`)."""
        return STATE_DIR if self.whole else f"{STATE_DIR}shards/{self.count}/{self.index}/"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`--shard I/N` with 0 ≤ I < N."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text)
    if not match:
        raise ConfigError(f"invalid --shard {text!r}: use I/N, e.g. 0/4 (shard I of N, 0 ≤ I < N)")
    index, count = int(match[1]), int(match[2])
    if not 1 <= count <= MAX_SHARDS:
        raise ConfigError(f"invalid --shard {text!r}: N must be 1 to {MAX_SHARDS}")
    if index >= count:
        raise ConfigError(f"invalid --shard {text!r}: I must be less than N (shards are numbered 0 to N-1)")
    return Shard(index, count)


def parse_run_id(text: str) -> str:
    if not _RUN_ID.fullmatch(text):
        raise ConfigError(f"invalid --run-id {text!r}: 1 to 128 letters, digits, '.', '_' or '-'")
    return text


RUNS_DIR = STATE_DIR + "runs/"


def run_dir(run_id: str) -> str:
    """Where the shards of one run leave their outcomes, relative to the prefix."""
    return f"{RUNS_DIR}{run_id}/"


def result_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}.json"


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What one shard of a run reports to the final recycle step (stored as JSON)."""

    index: int
    count: int
    result: str  # "success" | "partial" (some files failed)
    files_scanned: int  # this shard's files
    files_failed: int
    tree_entries: int  # files the walk saw in the whole tree (all shards'): 0 means the source is empty
    remote_objects: int  # this shard's objects under the prefix, as listed
    candidates: int  # this shard's objects due for recycling
    server_clock_known: bool
    own_writes_from: float | None  # the server's time (Unix s) before this shard's first write; None: no write
    state_saved: bool = True  # its hash cache and recorded attributes were saved (state_layout.drop_other_layouts)

    @classmethod
    def from_dict(cls, data: dict) -> ShardResult:
        return cls(**{name: data[name] for name in cls.__slots__ if name in data})


def shard_run_refusal(results: dict[int, ShardResult], count: int) -> str | None:
    """Why the final step must not recycle for this run because of its shards, or None if all N succeeded.

    The whole-prefix guards (empty source, cap) come after, in `plan.recycle_refusal`, over the sums.
    """
    missing = [i for i in range(count) if i not in results]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return f"no result from shard(s) {shown} of {count}: nothing is recycled until every shard succeeded"
    failed = [r.index for r in results.values() if r.result != "success" or r.files_failed]
    if failed:
        shown = ", ".join(str(i) for i in sorted(failed)[:10])
        return f"shard(s) {shown} of {count} failed: nothing is recycled until every shard succeeded"
    if any(r.count != count for r in results.values()):
        return "the shard results disagree on N"
    empty = [r.index for r in results.values() if r.tree_entries == 0]
    if empty and sum(r.candidates for r in results.values()):
        shown = ", ".join(str(i) for i in sorted(empty)[:10])
        return (f"shard(s) {shown} saw an empty source: refusing to recycle anything (is the volume mounted "
                f"in every pod?)")
    return None
