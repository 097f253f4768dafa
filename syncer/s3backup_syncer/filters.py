"""`--include` / `--exclude` globs over relative keys (pure).

- A pattern without `/` matches a name at any depth (`*.tmp`, `cache`).
- A pattern with `/` matches the whole relative path from the source root (`db/*.sql`).
- `*` and `?` stay within one path segment; `**` crosses segments.
- A directory whose name or path matches an exclude is skipped whole.
- With includes, a file must match at least one of them. Excludes win over includes.
Remote objects that the filters leave out are never recycled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .config import is_utf8
from .errors import ConfigError


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    anchored = "/" in pattern.strip("/")
    body = pattern.strip("/")
    regex = ""
    i = 0
    while i < len(body):
        char = body[i]
        if body.startswith("**", i):
            regex += ".*"
            i += 2
            if body.startswith("/", i):
                regex = regex[:-2] + "(?:.*/)?"
                i += 1
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "[":
            end = body.find("]", i + 1)
            if end == -1:
                regex += re.escape(char)
            else:
                regex += "[" + body[i + 1:end].replace("\\", "\\\\").replace("!", "^", 1) + "]"
                i = end
        else:
            regex += re.escape(char)
        i += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(f"^{prefix}{regex}$", re.DOTALL)


def _matches(pattern: str, path: str) -> bool:
    return bool(_compile(pattern).match(path))


@dataclass(frozen=True)
class Filters:
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in (*self.includes, *self.excludes):
            if not pattern.strip("/") or not is_utf8(pattern):
                raise ConfigError(f"invalid filter pattern {pattern!a}")
            try:
                _compile(pattern)
            except re.error as exc:
                raise ConfigError(f"invalid filter pattern {pattern!r}: {exc}") from None

    def wants_file(self, key: str) -> bool:
        if any(_matches(p, key) for p in self.excludes):
            return False
        if self.includes:
            return any(_matches(p, key) for p in self.includes)
        return True

    def wants_directory(self, key: str) -> bool:
        """False prunes a whole subtree: only excludes can do that (includes may match deeper)."""
        return not any(_matches(p, key) for p in self.excludes)

    def in_scope(self, key: str) -> bool:
        """Whether a remote key is one the filters select; keys out of scope are never recycled."""
        if not self.wants_file(key):
            return False
        parts = key.split("/")[:-1]
        return all(self.wants_directory("/".join(parts[: i + 1])) for i in range(len(parts)))
