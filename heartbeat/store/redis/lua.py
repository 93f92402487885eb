"""The Lua heartbeat runs in Redis: ``lua/*.lua``, built for one Redis or a Cluster.

A script runs atomically on the server, so storing a ping and publishing it
is one command that no crash can split. Each script file names the shared
fragments it needs on its first line (``--! needs: codes now emit ...``);
it is built as the layout's fragment (``layout_single.lua`` or
``layout_cluster.lua``: ``PUBLISH`` or ``SPUBLISH``), then those fragments
in order, then its own body, so a step written once in a fragment runs in
both layouts. A script whose first line is a shebang (``#!lua flags=…``,
which Redis reads only there) keeps it first, its needs on the next line.
Scripts are called by hash (``EVALSHA``) and sent in full
(``EVAL``) only when Redis does not know them yet (``NOSCRIPT``: a fresh or
restarted server, or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any, Literal

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, ResponseError

from heartbeat.store.redis.txredis import encode, send

Layout = Literal["single", "cluster"]

_NEEDS = "--! needs:"


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``, shipped as package data."""
    return (files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def build(name: str, layout: Layout) -> str:
    """Script ``name`` for ``layout``: the layout, the fragments it needs, its body."""
    body = source(name)
    shebang = ""
    if body.startswith("#!"):
        shebang, _, body = body.partition("\n")
        shebang += "\n"
    first, _, rest = body.partition("\n")
    needs = first[len(_NEEDS):].split() if first.startswith(_NEEDS) else []
    if needs:
        body = rest
    return "".join([shebang, source(f"layout_{layout}"), *(source(n) for n in needs), body])


def _codes() -> dict[str, int]:
    found = re.findall(r"^local ([A-Z_]+) = (\d+)", source("codes"), re.MULTILINE)
    return {name: int(value) for name, value in found}


# What a ping's step returns, read from the one table both layouts use (codes.lua).
CODES = _codes()
STORED, CAME_ONLINE = CODES["STORED"], CODES["CAME_ONLINE"]
HIDDEN, WENT_OFFLINE = CODES["HIDDEN"], CODES["WENT_OFFLINE"]
NEEDS_ARM = CODES["NEEDS_ARM"]


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def command(self, keys: Sequence[str], args: Sequence[object] = ()) -> bytes:
        """The ``EVALSHA`` of this script, encoded (for :func:`~.txredis.send`)."""
        return encode(args, ("EVALSHA", self.sha, len(keys), *keys))

    def run(self, conn: Any, keys: Sequence[str], args: Sequence[object] = ()) -> Deferred[Any]:
        """``EVALSHA``, then ``EVAL`` if the server has not seen the script.

        On a connection, the call is encoded at once and sent with
        :func:`~.txredis.send`; anything else that executes commands (a
        Cluster slot's stand-in) gets them one by one.
        """
        if isinstance(conn, RedisProtocol):
            d = maybeDeferred(send, conn, self.command(keys, args), 1).addCallback(_only)
        else:
            operands: tuple[object, ...] = (len(keys), *keys, *args)
            d = maybeDeferred(conn.execute_command, "EVALSHA", self.sha, *operands)
        return self.or_eval(d, conn, keys, args)

    def or_eval(self, d: Deferred[Any], conn: Any, keys: Sequence[str],
                args: Sequence[object] = ()) -> Deferred[Any]:
        """``d``, the call's result; if it failed ``NOSCRIPT``, the script sent in full on ``conn``."""
        return d.addErrback(self._unknown, conn, keys, args)

    def _unknown(self, failure: Failure, conn: Any, keys: Sequence[str],
                 args: Sequence[object]) -> Deferred[Any] | Failure:
        if not (failure.check(ResponseError) and str(failure.value).startswith("NOSCRIPT")):
            return failure
        operands: tuple[object, ...] = (len(keys), *keys, *args)
        return maybeDeferred(conn.execute_command, "EVAL", self.source, *operands)


def _only(replies: list[Any]) -> Any:
    """The reply of one command sent with :func:`~.txredis.send`; an error raised."""
    reply = replies[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


@dataclass(frozen=True)
class Scripts:
    """Every script, built for one layout."""

    ping: Script
    leave: Script
    due: Script
    expire: Script
    read_many: Script
    rearm: Script
    erase: Script
    notify: Script
    prune: Script
    # The change feed's read (one Redis), and its webhooks' claims and progress.
    changes: Script
    claim: Script
    delivered: Script
    # One Redis only.
    restore: Script
    # A Cluster only (cluster_topology; feed.ClusterReader).
    arm: Script
    reindex: Script
    slot_changes: Script
    feed_epoch: Script


@cache
def scripts(layout: Layout) -> Scripts:
    return Scripts(**{name: Script(build(name, layout))
                      for name in Scripts.__dataclass_fields__})
