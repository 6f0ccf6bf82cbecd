"""JSON Lines files that a process appends to, one record and its newline at a time: a kill while
appending tears the last line, which then lacks its newline. One strategy for every such file (a
dataset's `groups.jsonl` while it is written, a training run's `metrics.jsonl`): a torn last line
is dropped with a warning; any other bad line is an error naming the file and the line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, List, Optional

logger = logging.getLogger(__name__)


class JsonLinesError(ValueError):
    """A line that is not a record and was not torn by a kill, so is not to be dropped."""


def read_jsonl(path: Path, check: Optional[Callable[[Any], None]] = None, repair: bool = False) -> List[Any]:
    """The records of `path`, one JSON value per line; blank lines are skipped. `check(record)`
    raises ValueError for a value that parses but is not a record. A last line without its newline
    that does not parse or check is torn: it is dropped with a warning and, with `repair`, cut from
    the file (and a last record without its newline given one), so that appending continues after
    the last whole record. Any other bad line raises JsonLinesError naming the file and line."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    records: List[Any] = []
    end = 0  # bytes up to the end of the last line kept
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                record = json.loads(line)  # bad UTF-8 raises UnicodeDecodeError, a ValueError too
                if check is not None:
                    check(record)
            except ValueError as err:
                if number < len(lines) or line.endswith(b"\n"):
                    raise JsonLinesError(
                        f"{path}:{number}: not a record ({err}); only a last line without its "
                        "newline, as a kill while appending leaves it, is dropped"
                    ) from None
                logger.warning("%s:%d: dropped a partly written last line (%s)", path, number, err)
                break
            records.append(record)
        end += len(line)
    if repair and (end < len(data) or (end and not data.endswith(b"\n"))):
        with path.open("r+b") as f:
            f.truncate(end)
            if end and not data[:end].endswith(b"\n"):
                f.seek(end)
                f.write(b"\n")
    return records
