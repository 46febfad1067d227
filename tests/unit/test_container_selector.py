"""--container / --pod / --k8s-namespace values: what they match, what they refuse."""

from __future__ import annotations

import pytest

from tcpaccept.containers import Selector, SelectorError
from tcpaccept.model import Container

ID = "9832cd0e4f1e5b3c8d2a7f6b1c0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e"
WEB = Container(ID, "web", "shop-7d9f", "shop", "containerd")
PLAIN = Container("a" * 64, "cafe", runtime="podman")


def test_name_list_matches_any_of_its_names() -> None:
    selector = Selector.from_flags(container="db,web")
    assert selector.matches(WEB) and not selector.matches(PLAIN)


def test_id_prefix_of_twelve_hex_digits_matches() -> None:
    assert Selector.from_flags(container=ID[:12]).matches(WEB)
    assert Selector.from_flags(container=ID).matches(WEB)
    assert not Selector.from_flags(container=ID[:11]).matches(WEB)  # a name, not an id


def test_short_hex_string_is_still_a_name() -> None:
    assert Selector.from_flags(container="cafe").matches(PLAIN)


def test_pod_and_namespace_must_both_match() -> None:
    assert Selector.from_flags(pod="shop-7d9f", k8s_namespace="shop").matches(WEB)
    assert not Selector.from_flags(pod="shop-7d9f", k8s_namespace="other").matches(WEB)
    assert Selector.from_flags(k8s_namespace="shop").matches(WEB)
    assert not Selector.from_flags(k8s_namespace="shop").matches(PLAIN)


def test_nothing_matches_no_container_or_an_empty_selector() -> None:
    assert not Selector.from_flags(container="web").matches(None)
    assert not Selector().matches(WEB) and not Selector()


@pytest.mark.parametrize("flags,flag", [
    ({"container": ""}, "--container"),
    ({"container": "web,,db"}, "--container"),
    ({"container": "we b"}, "--container"),
    ({"container": "-web"}, "--container"),
    ({"pod": "Shop"}, "--pod"),
    ({"pod": "shop/7d9f"}, "--pod"),
    ({"k8s_namespace": "kube.system"}, "--k8s-namespace"),
    ({"k8s_namespace": "x" * 64}, "--k8s-namespace"),
])
def test_bad_values_name_their_flag(flags: dict[str, str], flag: str) -> None:
    with pytest.raises(SelectorError) as error:
        Selector.from_flags(**flags)
    assert error.value.flag == flag
    assert str(error.value).startswith(f"{flag}: ") and "\n" not in str(error.value)
