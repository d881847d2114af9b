"""Names of Redis keys and channels, all under one configurable prefix."""

from __future__ import annotations


class Keyspace:
    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, *parts: object) -> str:
        """`prefix:part:part...`"""
        return ":".join([self.prefix, *(str(p) for p in parts)])
