"""Which containers a filter wants: --container NAME|ID[,...], --pod NAME, --k8s-namespace NS."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..model import Container

ID_PREFIX_MIN = 12  # what `docker ps` shows; shorter hex strings are taken as names only
_HEX = re.compile(r"^[0-9a-f]+$")
# docker/podman names; Kubernetes container names (DNS labels) are a subset
_CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # DNS-1123 subdomain
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123 label


class SelectorError(ValueError):
    """A filter value that cannot name anything; ``str()`` is one line naming the flag."""

    def __init__(self, flag: str, value: str, what: str) -> None:
        super().__init__(f"{flag}: {value!r} is not {what}")
        self.flag = flag


def _split(flag: str, value: Optional[str], pattern: re.Pattern[str], what: str,
           max_length: int) -> tuple[str, ...]:
    if value is None:
        return ()
    items = tuple(item.strip() for item in value.split(","))
    for item in items:
        if not item or len(item) > max_length or not pattern.match(item):
            raise SelectorError(flag, item, what)
    return items


@dataclass(frozen=True)
class Selector:
    """Containers wanted by a filter. Within a field any item may match; every non-empty
    field must match (``--k8s-namespace shop --pod web`` is web in shop)."""

    containers: tuple[str, ...] = ()  # names, or id prefixes of >= 12 hex digits
    pods: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()

    @classmethod
    def from_flags(cls, container: Optional[str] = None, pod: Optional[str] = None,
                   k8s_namespace: Optional[str] = None) -> Selector:
        """From the flags' values (comma-separated lists); raises SelectorError."""
        return cls(
            _split("--container", container, _CONTAINER_NAME, "a container name or id", 255),
            _split("--pod", pod, _POD_NAME, "a pod name", 253),
            _split("--k8s-namespace", k8s_namespace, _NAMESPACE,
                   "a Kubernetes namespace name", 63),
        )

    def __bool__(self) -> bool:
        return bool(self.containers or self.pods or self.namespaces)

    def _container_matches(self, container: Container) -> bool:
        for item in self.containers:
            if item == container.name:
                return True
            if len(item) >= ID_PREFIX_MIN and _HEX.match(item) and container.id.startswith(item):
                return True
        return False

    def matches(self, container: Optional[Container]) -> bool:
        if container is None or not self:
            return False
        if self.containers and not self._container_matches(container):
            return False
        if self.pods and container.pod not in self.pods:
            return False
        return not (self.namespaces and container.namespace not in self.namespaces)
