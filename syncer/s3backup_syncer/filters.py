"""`--include` / `--exclude` globs over relative keys (pure), and the skip of a root `lost+found`.

- A pattern without `/` matches a name at any depth (`*.tmp`, `cache`).
- A pattern with `/` matches the whole relative path from the source root (`db/*.sql`); slashes at
  either end are ignored.
- `*`, `?` and `[...]` stay within one path segment and match dot files too; `**` as a whole segment
  crosses segments (`vm/**`, `**/cache/*`). `[!a]` and `[^a]` negate; elsewhere in a class `!` is
  literal. `\\` escapes the next character.
- A directory whose name or path matches an exclude is skipped whole.
- With includes, a file must match at least one of them. Excludes win over includes.
- `lost+found` directly under the source root is skipped unless `include_lost_found`: on an ext4
  volume it is root's, mode 0700, and a non-root syncer could never read it. Deeper down it is data.
Remote objects that the filters leave out are never recycled.

Matching is wcmatch's `globmatch` (bash-like globs, `GLOBSTAR | DOTGLOB`, `/` as the only separator).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from wcmatch import glob

from .config import is_utf8
from .errors import ConfigError

#: The directory fsck keeps at the root of an ext2/3/4 filesystem.
LOST_FOUND = "lost+found"

_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.FORCEUNIX


@lru_cache(maxsize=256)
def _compile(pattern: str) -> glob.WcMatcher[str]:
    body = pattern.strip("/")
    anchored = "/" in body
    return glob.compile(body if anchored else "**/" + body, flags=_FLAGS)


def _matches(pattern: str, path: str) -> bool:
    return _compile(pattern).match(path)


@dataclass(frozen=True)
class Filters:
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    include_lost_found: bool = False

    def __post_init__(self) -> None:
        for pattern in (*self.includes, *self.excludes):
            if not pattern.strip("/") or not is_utf8(pattern):
                raise ConfigError(f"invalid filter pattern {pattern!a}")
            try:
                _compile(pattern)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"invalid filter pattern {pattern!r}: {exc}") from None

    def wants_file(self, key: str) -> bool:
        if any(_matches(p, key) for p in self.excludes):
            return False
        if self.includes:
            return any(_matches(p, key) for p in self.includes)
        return True

    def wants_directory(self, key: str) -> bool:
        """False prunes a whole subtree: only excludes can do that (includes may match deeper)."""
        if key == LOST_FOUND and not self.include_lost_found:
            return False
        return not any(_matches(p, key) for p in self.excludes)

    def in_scope(self, key: str) -> bool:
        """Whether a remote key is one the filters select; keys out of scope are never recycled."""
        if not self.wants_file(key):
            return False
        parts = key.split("/")[:-1]
        return all(self.wants_directory("/".join(parts[: i + 1])) for i in range(len(parts)))
