"""Issue 4: a bad flag value is one line on stderr naming the flag and the value, exit 2,
nothing on stdout, and nothing loaded. Runs the real command; needs no kernel support."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tcpaccept.cli import build_parser


def tcpaccept(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcpaccept.cli", *args],
                          capture_output=True, text=True, timeout=30)


LONG_COMM = "abcdefghijklmnopqrst"  # 20 bytes; the kernel keeps 15

# (argv, what the one line must name: the flag, then the bad value where there is one)
BAD = [
    (["-p", "0"], ["-p/--pid", "0"]),
    (["-p", "abc"], ["-p/--pid", "abc"]),
    (["-p", "1,,2"], ["-p/--pid", "1,,2"]),
    (["-p", "-3"], ["-p/--pid", "-3"]),
    (["-P", "70000"], ["-P/--port", "70000"]),
    (["-P", "-1"], ["-P/--port", "-1"]),
    (["-P", "0"], ["-P/--port", "0"]),
    (["-s", "0"], ["-s/--summary", "0"]),
    (["--ring-buffer", "5"], ["--ring-buffer", "5"]),
    (["--ring-buffer", "2"], ["--ring-buffer", "2"]),
    (["--metrics", "localhost:x"], ["--metrics", "localhost:x"]),
    (["--metrics", "70000"], ["--metrics", "70000"]),
    (["-u", "-5"], ["-u/--uid", "-5"]),
    (["-u", "4294967295"], ["-u/--uid", "4294967295"]),
    (["-N", "x"], ["-N/--netns", "x"]),
    (["-r", "300.1.1.1/8"], ["-r/--remote", "300.1.1.1/8"]),
    (["-r", "10.0.0.0/8,,"], ["-r/--remote", "10.0.0.0/8,,"]),
    (["-c", LONG_COMM], ["-c/--comm", LONG_COMM]),
    (["-c", ""], ["-c/--comm"]),
    (["-d", "0"], ["-d/--duration", "0"]),
    (["-d", "-1"], ["-d/--duration", "-1"]),
    (["-d", "soon"], ["-d/--duration", "soon"]),
    (["-n", "0"], ["-n/--count", "0"]),
    (["-n", "1.5"], ["-n/--count", "1.5"]),
    (["--cgroup", "/nonexistent"], ["--cgroup", "/nonexistent"]),
    (["--cgroup", "/proc"], ["--cgroup", "/proc"]),  # a directory, not a cgroup v2 one
    (["--cgroupmap", "/nonexistent/map"], ["--cgroupmap", "/nonexistent/map"]),
    (["--mntnsmap", "/nonexistent/map"], ["--mntnsmap", "/nonexistent/map"]),
    (["-4", "-6"], ["-4/--ipv4", "-6/--ipv6"]),
    (["--probe", "magic"], ["--probe", "magic"]),
    (["--metrics", "1.2.3.4:99999"], ["--metrics", "99999"]),
    (["--bogus"], ["--bogus"]),
    (["-p"], ["-p/--pid"]),
]

# Issue 14 item 7: numbers in plain ASCII digits only (int() and float() take all of these),
# unicast --metrics addresses; item 5: the TLS files come in pairs, readable, with --metrics.
READABLE = __file__
BAD += [
    (["-P", "80_80"], ["-P/--port", "80_80"]),
    (["-P", "\u0668\u0660"], ["-P/--port", "\u0668\u0660"]),  # Arabic-Indic "80"
    (["-p", "\uff11"], ["-p/--pid", "\uff11"]),  # fullwidth "1"
    (["-p", "+5"], ["-p/--pid", "+5"]),
    (["-u", "1_000"], ["-u/--uid", "1_000"]),
    (["-N", "0x10"], ["-N/--netns", "0x10"]),
    (["-n", "1e3"], ["-n/--count", "1e3"]),
    (["-n", "9" * 40], ["-n/--count", "out of range"]),
    (["-d", "1_0"], ["-d/--duration", "1_0"]),
    (["-d", "\u0661"], ["-d/--duration", "\u0661"]),
    (["-d", "inf"], ["-d/--duration", "inf"]),
    (["-d", "nan"], ["-d/--duration", "nan"]),
    (["-s", "1e1"], ["-s/--summary", "1e1"]),
    (["--ring-buffer", "4_096"], ["--ring-buffer", "4_096"]),
    (["--metrics", "127.0.0.1:9_435"], ["--metrics", "9_435"]),
    (["--metrics", "127.0.0.1:\u0669\u0664\u0663\u0665"], ["--metrics", "\u0669\u0664"]),
    (["--metrics", "224.0.0.1:9435"], ["--metrics", "224.0.0.1", "multicast"]),
    (["--metrics", "[ff02::1]:9435"], ["--metrics", "ff02::1", "multicast"]),
    (["--metrics", "255.255.255.255:9435"], ["--metrics", "255.255.255.255", "broadcast"]),
    (["--metrics-tls-cert", "/nonexistent.pem"], ["--metrics-tls-cert", "/nonexistent.pem"]),
    (["--metrics-tls-key", "/etc"], ["--metrics-tls-key", "/etc"]),  # not a file
    (["--metrics", "9435", "--metrics-tls-cert", READABLE],
     ["--metrics-tls-cert", "--metrics-tls-key", "both"]),
    (["--metrics", "9435", "--metrics-tls-key", READABLE],
     ["--metrics-tls-cert", "--metrics-tls-key", "both"]),
    (["--metrics-tls-cert", READABLE, "--metrics-tls-key", READABLE],
     ["--metrics-tls-cert", "--metrics"]),
]


@pytest.mark.parametrize("argv,named", BAD, ids=[" ".join(a) or "empty" for a, _ in BAD])
def test_bad_value_is_one_line_naming_flag_and_value(argv: list[str], named: list[str]) -> None:
    result = tcpaccept(*argv)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tcpaccept: error: "), lines[0]
    for text in named:
        assert text in lines[0], (text, lines[0])


def test_help_ends_with_the_examples() -> None:
    result = tcpaccept("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    text = result.stdout.rstrip("\n")
    examples = text[text.rindex("\nexamples:\n"):].splitlines()[2:]
    assert all(line.startswith("  tcpaccept") for line in examples), examples
    # Every example distinct, and every flag it shows one the parser knows (none stale).
    assert len(set(examples)) == len(examples), examples
    known = set(build_parser()._option_string_actions)
    for line in examples:
        flags = [word for word in line.split("#")[0].split()[1:] if word.startswith("-")]
        assert set(flags) <= known, line
    assert text.splitlines()[-1] == examples[-1]
    shown = {line.split()[1] for line in examples if line.split()[1].startswith("-")}
    for flag in ("-p", "-P", "-4", "-6", "-u", "-c", "-N", "--cgroup", "-r", "--cgroupmap",
                 "--mntnsmap", "--no-unmap", "-n", "-d", "-t", "-x"):
        assert flag in shown, flag


def test_good_values_parse() -> None:
    from tcpaccept.cli import build_parser, configs_from

    args = build_parser().parse_args(
        ["-p", "1, 2", "-P", "80,443", "-4", "-u", "0", "-c", "fifteen-bytes-x", "-N", "1",
         "-r", "10.1.2.3/8,fd00::/8", "-d", "0.5", "-n", "3", "--no-unmap", "-t", "-x"])
    config, output = configs_from(args)
    assert config.pids == {1, 2} and config.lports == {80, 443}
    assert config.family == 4 and config.uid == 0 and config.comm == "fifteen-bytes-x"
    assert [str(n) for n in config.remotes] == ["10.0.0.0/8", "fd00::/8"]
    assert (output.duration, output.count, output.unmap_ipv4) == (0.5, 3, False)
    assert output.relative_time and output.extended


def test_strict_numbers_still_take_what_people_type() -> None:
    from tcpaccept.cli import build_parser, configs_from

    args = build_parser().parse_args(
        ["-P", "080, 443", "-d", ".5", "-s", "5.", "-n", "007", "--ring-buffer", "4096",
         "--metrics", "[::1]:9435", "--metrics-tls-cert", READABLE,
         "--metrics-tls-key", READABLE])
    config, output = configs_from(args)
    assert config.lports == {80, 443} and config.ring_buffer_bytes == 4096 * 1024
    assert (output.duration, output.summary_interval, output.count) == (0.5, 5.0, 7)
    assert output.metrics == ("::1", 9435)
    assert output.metrics_tls_cert == READABLE and output.metrics_tls_key == READABLE


@pytest.mark.parametrize("address", ["0.0.0.0:9435", "[::]:9435", "10.1.2.3:9435", "9435"])
def test_unicast_and_wildcard_metrics_addresses_parse(address: str) -> None:
    from tcpaccept.cli import build_parser

    assert build_parser().parse_args(["--metrics", address]).metrics[1] == 9435


# Issue 20 item 7: messages that say the truth, and flags that would do nothing refused.
IDLE = [
    (["-d", "99999999999"], ["-d/--duration", "99999999999", "less than 1000000000"]),
    (["-s", "1000000000"], ["-s/--summary", "less than 1000000000"]),
    (["--metrics-labels", "laddr"], ["--metrics-labels", "--metrics"]),
    (["-q"], ["-q/--quiet", "--metrics"]),
    (["-q", "-j"], ["-q/--quiet", "--metrics"]),
    (["-q", "-s"], ["-q/--quiet", "-s/--summary"]),
    (["-s", "-t"], ["-t/--timestamp", "-s/--summary"]),
    (["-s", "-T"], ["-T/--time", "-s/--summary"]),
    (["-s", "-x"], ["-x/--extended", "-s/--summary"]),
    (["-s", "-l"], ["-l/--latency", "-s/--summary"]),
    (["-s", "--drops"], ["--drops", "-s/--summary"]),
    (["-s", "--no-unmap"], ["--no-unmap", "-s/--summary"]),
    (["-j", "-t"], ["-t/--timestamp", "-j/--json"]),
    (["-j", "-l"], ["-l/--latency", "-j/--json"]),
    (["--metrics", "9435", "-q", "-x"], ["-x/--extended", "-q/--quiet"]),
    (["--metrics", "9435", "-q", "-t"], ["-t/--timestamp", "-q/--quiet"]),
]


@pytest.mark.parametrize("argv,named", IDLE, ids=[" ".join(a) for a, _ in IDLE])
def test_a_flag_that_would_do_nothing_is_one_line_and_exit_2(argv: list[str],
                                                             named: list[str]) -> None:
    test_bad_value_is_one_line_naming_flag_and_value(argv, named)


@pytest.mark.parametrize("argv", [
    ["-t"], ["-T"], ["-t", "-T", "-x", "-l", "--no-unmap", "--drops"],
    ["-j", "-x", "--no-unmap", "--drops"], ["-s", "1", "-j"],
    ["--metrics", "9435", "-q"], ["--metrics", "9435", "-q", "--drops"],
    ["--metrics", "9435", "--metrics-labels", "laddr,lport"], ["-q", "--drops"],
    ["--metrics", "9435", "-s", "5", "-q"],
], ids=" ".join)
def test_flags_that_do_something_in_their_mode_are_accepted(argv: list[str]) -> None:
    from tcpaccept.cli import build_parser
    from tcpaccept.flag_rules import idle_flag_error

    assert idle_flag_error(build_parser().parse_args(argv)) is None


def test_metrics_labels_default_when_not_given() -> None:
    from tcpaccept.cli import build_parser, configs_from
    from tcpaccept.config import DEFAULT_METRICS_LABELS

    _, output = configs_from(build_parser().parse_args(["--metrics", "9435"]))
    assert output.metrics_labels == DEFAULT_METRICS_LABELS
