"""State layouts: the N whose runs wrote each state object, and what a change of N does with them.

A layout is the N of the runs that keep their state there: 1 for `PREFIX/.s3backup/` itself
(unsharded runs and `--shard 0/1`), N for `PREFIX/.s3backup/shards/N/I/` (shards.Shard.state_dir).
When N changes, the first run of each new shard finds no state of its own: it builds it from the
newest other layout's hash caches and recorded attributes, keeping the rows of its own keys
(`seed_states`), so unchanged files are not read again and recorded attributes are not lost.
Both come from the same layout, written together, so a cache hit still implies that the file's
attributes were recorded. Once a layout has run whole (all shards succeeded: the final step; or an
unsharded run without failures), the other layouts' state is dropped (`drop_other_layouts`), so
restore, which reads every attributes state, never meets a stale row of an old layout.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .attributes_state import ATTRIBUTES_NAME
from .hashcache import CACHE_NAME
from .remote import STATE_DIR
from .state_objects import fetch_state

log = logging.getLogger("s3backup")

#: The table of each state file that seeding filters, by object name (both have a `key` column).
SEEDED_TABLES = {CACHE_NAME: "files", ATTRIBUTES_NAME: "attributes"}
_SHARD_DIR = re.compile(r"shards/([0-9]+)/([0-9]+)/(.+)")


@dataclass(frozen=True, slots=True)
class StateObject:
    key: str  # relative to the prefix
    layout: int  # the N that wrote it (1: unsharded)
    name: str  # `hash-cache.sqlite.gz`, `attributes.sqlite.gz` or `uploads/ID`
    modified: datetime


def state_object(key: str, modified: datetime) -> StateObject | None:
    """The layout and name of a state object (key relative to the prefix); None for anything else."""
    if not key.startswith(STATE_DIR):
        return None
    rest = key[len(STATE_DIR):]
    match = _SHARD_DIR.fullmatch(rest)
    layout, name = (int(match[1]), match[3]) if match else (1, rest)
    if name in SEEDED_TABLES or (name.startswith("uploads/") and "/" not in name[len("uploads/"):]):
        return StateObject(key, layout, name, modified)
    return None


def donor_layout(objects: list[StateObject], own_layout: int) -> int | None:
    """The layout to seed a new shard of `own_layout` from: the other one with the newest state file."""
    others = [o for o in objects if o.layout != own_layout and o.name in SEEDED_TABLES]
    return max(others, key=lambda o: o.modified).layout if others else None


def list_state_objects(client, bucket: str, prefix: str) -> list[StateObject]:
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + STATE_DIR):
        for item in page.get("Contents", []):
            parsed = state_object(item["Key"][len(prefix):], item["LastModified"])
            if parsed is not None:
                found.append(parsed)
    return found


def seed_states(client, bucket: str, prefix: str, objects: list[StateObject], own_dir: str, own_layout: int,
                owns: Callable[[str], bool], workdir: Path) -> dict[str, Path]:
    """If this shard has no state yet, its state files built from the newest other layout's, by name.

    Returns {} when the shard has state of its own, or there is nothing to seed from.
    """
    if any(o.key in (own_dir + CACHE_NAME, own_dir + ATTRIBUTES_NAME) for o in objects):
        return {}
    layout = donor_layout(objects, own_layout)
    if layout is None:
        return {}
    seeded: dict[str, Path] = {}
    for name, table in SEEDED_TABLES.items():
        donors = [o.key for o in objects if o.layout == layout and o.name == name]
        if donors:
            target = workdir / f"seeded-{name.removesuffix('.gz')}"
            _build(client, bucket, prefix, donors, target, table, owns)
            seeded[name] = target
    log.info("first run of this shard layout: state seeded from the %s layout's (%s)",
             "unsharded" if layout == 1 else f"{layout}-shard", ", ".join(seeded))
    return seeded


def _build(client, bucket: str, prefix: str, donors: list[str], target: Path, table: str,
           owns: Callable[[str], bool]) -> None:
    """`target`: the rows of `table` in the donor state objects whose key this shard owns."""
    for number, key in enumerate(donors):
        donor = target.with_name(f"{target.name}.donor-{number}")
        if not fetch_state(client, bucket, prefix + key, donor):
            raise FileNotFoundError(f"the state object {key} went away while it was read")
        first = not target.exists()
        if first:
            donor.rename(target)
        db = sqlite3.connect(target, isolation_level=None)
        try:
            db.create_function("owns", 1, owns, deterministic=True)
            if first:
                db.execute(f"DELETE FROM {table} WHERE NOT owns(key)")
            else:
                db.execute("ATTACH DATABASE ? AS donor", (str(donor),))
                columns = _with_donor_columns(db, table)
                db.execute(f"INSERT OR IGNORE INTO main.{table} ({columns}) SELECT {columns} FROM donor.{table}"
                           " WHERE owns(key)")
                db.execute("DETACH DATABASE donor")
        finally:
            db.close()
            if not first:
                donor.unlink()


def _with_donor_columns(db: sqlite3.Connection, table: str) -> str:
    """The donor's columns, added to the target's table where missing (states of an older s3backup have fewer:
    columns are only ever added), as a list for INSERT ... SELECT."""
    donor = [(row[1], row[2]) for row in db.execute(f"PRAGMA donor.table_info({table})")]
    present = {row[1] for row in db.execute(f"PRAGMA main.table_info({table})")}
    for name, kind in donor:
        if name not in present:
            db.execute(f"ALTER TABLE main.{table} ADD COLUMN {name} {kind}")
    return ", ".join(name for name, _ in donor)


def drop_other_layouts(client, bucket: str, prefix: str, current: int,
                       objects: list[StateObject] | None = None) -> int:
    """Delete the state of every layout but `current` (hash caches, recorded attributes, upload markers).

    Call only once every shard of `current` has run successfully, each with its own state saved or seeded.
    Returns how many objects went. Housekeeping: a failure is logged and left for the next time.
    """
    try:
        if objects is None:
            objects = list_state_objects(client, bucket, prefix)
        doomed = [o.key for o in objects if o.layout != current]
        for key in doomed:
            client.delete_object(Bucket=bucket, Key=prefix + key)
    except Exception as exc:
        log.warning("could not drop the state of an earlier shard layout (the next run tries again): %s", exc)
        return 0
    if doomed:
        log.info("dropped %d state object(s) of earlier shard layouts", len(doomed))
    return len(doomed)
