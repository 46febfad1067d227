"""Proposed with the tracer.py patch: an unreadable or empty CPU list is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpaccept.errors import TcpacceptError
from tcpaccept.tracer import _possible_cpus


@pytest.mark.parametrize("text,cpus", [("0\n", 1), ("0-3\n", 4), ("0,2-5\n", 6)])
def test_cpu_lists(tmp_path: Path, text: str, cpus: int) -> None:
    (tmp_path / "possible").write_text(text)
    assert _possible_cpus(str(tmp_path / "possible")) == cpus


@pytest.mark.parametrize("text", ["", "\n", "garbage", "0-"])
def test_an_empty_or_odd_list_is_one_line(tmp_path: Path, text: str) -> None:
    (tmp_path / "possible").write_text(text)
    with pytest.raises(TcpacceptError) as caught:
        _possible_cpus(str(tmp_path / "possible"))
    assert "\n" not in str(caught.value) and "possible" in str(caught.value)


def test_an_unreadable_list_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TcpacceptError) as caught:
        _possible_cpus(str(tmp_path / "missing"))
    assert str(caught.value).endswith("No such file or directory")
