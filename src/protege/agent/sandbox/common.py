"""What every sandbox backend shares: the shell snippets that read and diff inside a sandbox, the
output cap, and the mapping of a failed read to the OSError a file API raises."""

from __future__ import annotations

from protege.agent.protocols import CommandResult

# Shell snippets shared by all backends; each reads its arguments as $1, $2, ... and runs in workdir.
READ_SCRIPT = """\
if [ -d "$1" ]; then echo "is a directory: $1" >&2; exit 21; fi
if [ ! -e "$1" ]; then echo "no such file: $1" >&2; exit 2; fi
if [ -n "$2" ] && size=$(stat -L -c %s -- "$1") && [ "$size" -gt "$2" ]; then
  echo "$1 is $size bytes, over the limit of $2 bytes read back from the sandbox; look at parts of it with bash (head, sed -n)" >&2
  exit 27
fi
exec cat -- "$1"
"""
# The diff stages into a throwaway index so the agent's own index is untouched; byte-code caches
# are never part of a patch.
DIFF_SCRIPT = """\
set -e
idx=$(mktemp)
trap 'rm -f "$idx"' EXIT
cp -p "$(git rev-parse --git-path index)" "$idx" 2>/dev/null || true  # -p: git's racy-clean check needs the mtime
export GIT_INDEX_FILE="$idx"
git add -A -- . ':(exclude,glob)**/__pycache__/**' ':(exclude,glob)**/*.pyc'
git -c core.quotePath=false diff --cached --no-color --no-ext-diff --no-textconv "$1"
"""


class OutputCap:
    """Keeps the head and tail of a stream within `limit` bytes; counts what it drops."""

    def __init__(self, limit: int | None, errors: str = "replace") -> None:
        self.limit = limit
        self.errors = errors
        self.total = 0
        self._head = bytearray()
        self._tail = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.limit is None:
            self._head += data
            return
        room = self.limit // 2 - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data
        keep = self.limit - self.limit // 2
        if len(self._tail) > 2 * keep:  # trim in batches so feeding stays linear
            del self._tail[:-keep]

    def text(self) -> tuple[str, bool]:
        """(output, truncated); a truncated output has a marker saying how many bytes were cut."""
        if self.limit is None or self.total <= self.limit:
            return (self._head + self._tail).decode(errors=self.errors), False
        tail = self._tail[-(self.limit - self.limit // 2) :]
        cut = self.total - len(self._head) - len(tail)
        marker = f"\n[... output truncated: {cut} of {self.total} bytes cut ...]\n"
        return self._head.decode(errors=self.errors) + marker + tail.decode(errors=self.errors), True


def raise_for_read(path: str, result: CommandResult) -> str:
    """Map READ_SCRIPT's exit status to the OSError a file API would raise, naming the path."""
    errors = {2: FileNotFoundError, 21: IsADirectoryError}  # 27: over the read limit, a plain OSError
    if result.exit_code != 0:
        raise errors.get(result.exit_code, OSError)(f"{path}: {result.output.strip()}")
    return result.output
