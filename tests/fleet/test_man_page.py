"""tcpaccept(8): every option of --help is documented, every column and JSON key of the
README is in FIELDS, it renders without groff warnings, and `man tcpaccept` finds it once
scripts/setup.sh has run."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.fleet.deployment import ROOT, VENV_BIN

PAGE = ROOT / "man" / "tcpaccept.8"
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "REQUIREMENTS", "OPTIONS", "EXAMPLES", "FIELDS",
            "OVERHEAD", "SOURCE", "SEE ALSO"]
# Keys of the container attribution (contracts.md): JSON gains them with the containers work.
CONTAINER_KEYS = ["container_id", "container", "pod", "namespace"]


def render(*man_args: str, width: int = 200) -> subprocess.CompletedProcess:
    env = dict(os.environ, MANWIDTH=str(width), MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
    return subprocess.run(["man", "--warnings=all", *man_args], capture_output=True, text=True,
                          env=env, timeout=60)


def section(text: str, name: str) -> str:
    """The rendered text of one top-level section (headings start in column 0)."""
    match = re.search(rf"^{name}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.S | re.M)
    assert match, f"no {name} section"
    return match.group(1)


def help_options() -> list[str]:
    """Every -x / --long option that `tcpaccept --help` lists (argparse puts each option's
    invocation two spaces in; descriptions are indented further)."""
    result = subprocess.run([str(VENV_BIN / "tcpaccept"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    options = []
    for line in result.stdout.splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if match:
            options += re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", match.group(1))
    assert "--help" in options and "--check" in options, result.stdout
    return sorted(set(options))


@pytest.fixture(scope="module")
def page_text() -> str:
    result = render("-l", str(PAGE))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("width", [80, 200])
def test_page_renders_without_warnings(width: int) -> None:
    result = render("-l", str(PAGE), width=width)
    assert result.returncode == 0
    assert result.stderr == "", result.stderr
    assert "TCPACCEPT(8)" in result.stdout
    groff = subprocess.run(["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True,
                           text=True, timeout=60)
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr


def test_page_has_the_seed_sections_in_order(page_text: str) -> None:
    headings = [line for line in page_text.splitlines() if line in SECTIONS]
    assert headings == SECTIONS


def test_every_help_option_is_documented(page_text: str) -> None:
    options = section(page_text, "OPTIONS")
    missing = [opt for opt in help_options()
               if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", options)]
    assert not missing, f"in --help but not in tcpaccept(8) OPTIONS: {missing}"


def test_the_option_check_can_fail(page_text: str) -> None:
    # Negative control for the test above: an option the page does not have is caught.
    options = section(page_text, "OPTIONS")
    assert not re.search(r"(?<![\w-])--no-such-option(?![\w-])", options)
    assert re.search(r"(?<![\w-])--ring-buffer(?![\w-])", options)


def readme_columns_and_keys() -> tuple[list[str], list[str]]:
    readme = (ROOT / "README.md").read_text()
    output = readme.split("## Output", 1)[1].split("\n## ", 1)[0]
    columns = []
    for row in re.findall(r"^\| ([A-Z][^|]*?) \|", output, re.M):
        columns += [c.strip() for c in row.split(",")]
    sample = re.search(r"^# tcpaccept --json\n(\{.*\})$", readme, re.M)
    assert sample, "README lost its --json sample"
    keys = list(json.loads(sample.group(1)))
    return columns, keys


def test_fields_cover_every_column_and_json_key(page_text: str) -> None:
    fields = section(page_text, "FIELDS")
    columns, keys = readme_columns_and_keys()
    assert {"PID", "BL", "RADDR"} <= set(columns)
    wanted = columns + ["TIME(s)", "QLAT(ms)", "UID", "NETNS", "FD", "CGROUP", "CONTAINER"]
    wanted += keys + CONTAINER_KEYS + ["dropped"]
    missing = [w for w in wanted if not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", fields)]
    assert not missing, f"not in tcpaccept(8) FIELDS: {missing}"


def test_man_finds_the_installed_page() -> None:
    # scripts/setup.sh installs it where man-db looks without any MANPATH.
    where = render("-w", "tcpaccept")
    assert where.returncode == 0, "man -w tcpaccept: not installed (bash scripts/setup.sh)"
    installed = os.path.realpath(where.stdout.strip())  # Debian: /usr/local/man -> share/man
    assert installed == "/usr/local/share/man/man8/tcpaccept.8"
    with open(installed) as f:
        assert f.read() == PAGE.read_text(), "installed page is stale: run scripts/setup.sh"
    shown = render("8", "tcpaccept", width=80)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert "Trace TCP passive connections" in " ".join(shown.stdout.split())
