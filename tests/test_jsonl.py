"""pdiff_core.jsonl: the one reader of appended JSON Lines files (a dataset being written, a run's metrics)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from pdiff_core.jsonl import JsonLinesError, read_jsonl

RECORDS = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _lines(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_whole_file_reads_every_record_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", json.dumps(RECORDS[0]) + "\n\n" + json.dumps(RECORDS[1]) + "\n")
    assert read_jsonl(path) == RECORDS


def test_empty_file_has_no_records_and_is_left_alone(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", "")
    assert read_jsonl(path, repair=True) == []
    assert path.read_bytes() == b""


def test_torn_last_line_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    path = _write(tmp_path / "a.jsonl", _lines(RECORDS) + '{"step": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="pdiff_core.jsonl"):
        assert read_jsonl(path) == RECORDS
    assert f"{path}:3: dropped a partly written last line" in caplog.text
    assert path.read_text().endswith('"lo')  # reading alone changes nothing


def test_repair_cuts_the_torn_line_so_appending_continues(tmp_path: Path) -> None:
    whole = _lines(RECORDS)
    path = _write(tmp_path / "a.jsonl", whole + '{"step": 3, "lo')
    read_jsonl(path, repair=True)
    assert path.read_text() == whole
    with path.open("a") as f:
        f.write(json.dumps({"step": 3}) + "\n")
    assert read_jsonl(path) == [*RECORDS, {"step": 3}]


def test_repair_ends_a_whole_last_record_with_its_newline(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", _lines(RECORDS)[:-1])  # the kill came just before the newline
    assert read_jsonl(path, repair=True) == RECORDS
    assert path.read_text() == _lines(RECORDS)


def test_torn_only_line_leaves_an_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", '{"id": "0000')
    assert read_jsonl(path, repair=True) == []
    assert path.read_bytes() == b""


def test_corrupt_middle_line_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", json.dumps(RECORDS[0]) + "\n{oops\n" + json.dumps(RECORDS[1]) + "\n")
    before = path.read_bytes()
    with pytest.raises(JsonLinesError, match=rf"^{re.escape(str(path))}:2: not a record"):
        read_jsonl(path, repair=True)
    assert path.read_bytes() == before  # nothing is cut from a file that was not torn


def test_corrupt_last_line_with_its_newline_is_not_torn(tmp_path: Path) -> None:
    # A kill leaves a line without its newline; a whole bad line was written bad, and is not dropped.
    path = _write(tmp_path / "a.jsonl", _lines(RECORDS) + "{oops\n")
    with pytest.raises(JsonLinesError, match=rf"^{re.escape(str(path))}:3: not a record"):
        read_jsonl(path)


def test_check_decides_what_is_a_record(tmp_path: Path, caplog) -> None:
    def has_step(record) -> None:
        if not isinstance(record.get("step"), int):
            raise ValueError("no integer 'step'")

    path = _write(tmp_path / "a.jsonl", _lines(RECORDS) + '{"step": "3"}')
    assert read_jsonl(path, has_step) == RECORDS
    assert "no integer 'step'" in caplog.text
    path = _write(tmp_path / "b.jsonl", '{"loss": 1}\n' + _lines(RECORDS))
    with pytest.raises(JsonLinesError, match=rf"{re.escape(str(path))}:1: not a record \(no integer 'step'\)"):
        read_jsonl(path, has_step)


def test_metrics_reader_follows_the_same_rule(tmp_path: Path, caplog) -> None:
    from training.run_folder import CheckpointRestoreError, read_metrics

    path = _write(tmp_path / "metrics.jsonl", _lines(RECORDS) + '{"step": 3, "lo')
    assert read_metrics(path) == RECORDS
    assert "dropped a partly written last line" in caplog.text
    path = _write(tmp_path / "metrics.jsonl", '{"loss": 1}\n' + _lines(RECORDS))
    with pytest.raises(CheckpointRestoreError, match=rf"{re.escape(str(path))}:1: not a record \(no integer 'step'\)"):
        read_metrics(path)
