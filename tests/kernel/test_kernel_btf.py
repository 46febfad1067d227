"""The start's cheap questions to the kernel's BTF (btf.py reads /sys/kernel/btf/vmlinux
once instead of having libbpf parse it) give libbpf's answers, on this kernel's own BTF."""

from __future__ import annotations

import pytest

from tcpaccept.btf import kernel_btf_has_name, kernel_btf_has_struct, kernel_has_struct

pytestmark = [pytest.mark.method_agnostic]  # reads the kernel BTF file, no attach method

# Structs every kernel with BTF has, names that exist only as other kinds (a function, a
# kfunc, a member), and one that exists nowhere. proto_accept_arg is the 6.10+ question.
NAMES = ("sock", "tcp_sock", "sk_buff", "in6_addr", "task_struct", "proto_accept_arg",
         "inet_csk_accept", "bpf_rdonly_cast", "skc_family", "no_such_struct_anywhere")


@pytest.mark.parametrize("name", NAMES)
def test_struct_check_agrees_with_libbpf(name: str) -> None:
    assert kernel_btf_has_struct(name) == kernel_has_struct(name)  # libbpf's full parse


def test_struct_check_tells_structs_from_other_names() -> None:
    # Positive and negative controls: the comparison above cannot pass with all-False.
    assert kernel_btf_has_struct("sock") and kernel_btf_has_struct("task_struct")
    assert kernel_btf_has_name("inet_csk_accept")  # a function: its name is there...
    assert not kernel_btf_has_struct("inet_csk_accept")  # ...but it is not a struct
    assert not kernel_btf_has_struct("skc_family")  # a member's name, not a struct


def test_unreadable_btf_answers_no(tmp_path) -> None:
    junk = tmp_path / "vmlinux"
    junk.write_bytes(b"not BTF at all, not even a header of the right size")
    assert not kernel_btf_has_struct("sock", str(junk))
    assert not kernel_btf_has_struct("sock", str(tmp_path / "missing"))
