"""Where a user's presence lives in Redis: key names, and the hash slots they share.

The compat key ``REDIS_PREFIX + userid`` (a hash, ``time`` and ``status``)
keeps the exact name Beep's services read, so it has no hash tag of ours:
Redis Cluster puts it in the slot of CRC16 of the whole key (or of the tag
it happens to contain). The user's other keys (devices, online devices)
are named to land in that same slot: they start with a hash tag whose
content is exactly what the compat key's slot is computed from —
``{heartbeat:alice}:devices`` beside ``heartbeat:alice``. They start with
``{``, so no user's compat key can be one of them (unless ``REDIS_PREFIX``
itself starts with ``{``).

One case has no such name: a compat key with no hash tag that contains
``}`` (user ``a}b``), since a tag ends at the first ``}``. On one Redis such
a user's other keys are ``{}``-prefixed (an empty tag: the whole key is
hashed, and slots do not matter). In a Cluster they are tagged with a
short string that hashes to the compat key's slot (:func:`slot_tag`), so
they share its slot like everyone's.

Deadlines are a sorted set split into :data:`PARTITIONS` partitions, each
under its own tag so a Cluster spreads them; a device goes to partition
``slot % PARTITIONS`` of its compat key's slot. On one Redis a sweep's
claim step touches one partition and the user's keys in one script; a
Cluster cannot (two slots), so there the user's own ``:deadlines`` key
holds the truth and the partition an index (see ``cluster_topology``).
"""

from __future__ import annotations

from binascii import crc_hqx
from dataclasses import dataclass

# Enough that no one sorted set is hot; few enough that a sweep reading
# them all each second is one cheap call.
PARTITIONS = 16
CLUSTER_SLOTS = 16384


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes, if it has a (non-empty) tag."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1:end]


def slot(key: str) -> int:
    """``key``'s Redis Cluster hash slot (CRC16-XMODEM, like ``CLUSTER KEYSLOT``)."""
    tag = hash_tag(key)
    return crc_hqx((key if tag is None else tag).encode("utf-8"), 0) % CLUSTER_SLOTS


_slot_tags: list[str] = []


def build_slot_tags() -> None:
    """Build :func:`slot_tag`'s table (about 110,000 CRCs, some 60 ms) if not built yet.

    A Cluster topology builds it as it is made, before the reactor runs,
    so that no request waits for it on the reactor thread.
    """
    if _slot_tags:
        return
    table: list[str | None] = [None] * CLUSTER_SLOTS
    left, n = CLUSTER_SLOTS, 0
    while left:
        found = crc_hqx(str(n).encode(), 0) % CLUSTER_SLOTS
        if table[found] is None:
            table[found] = str(n)
            left -= 1
        n += 1
    _slot_tags.extend(tag for tag in table if tag is not None)


def slot_tag(wanted: int) -> str:
    """The shortest decimal number whose CRC16 is in slot ``wanted`` (see :func:`build_slot_tags`)."""
    build_slot_tags()
    return _slot_tags[wanted]


def _tagged_base(key: str, cluster: bool) -> str:
    """A start for the user's other keys that hashes like ``key`` (see above)."""
    tag = hash_tag(key)
    if tag is not None:
        return "{" + tag + "}" + key
    if "}" not in key:
        return "{" + key + "}"
    if cluster:
        return "{" + slot_tag(slot(key)) + "}" + key
    return "{}" + key


@dataclass(frozen=True, slots=True)
class UserKeys:
    """One user's keys; ``key`` is also their pub/sub channel."""

    key: str
    devices: str
    online: str
    partition: int
    # Redis Cluster only: the user's own device deadlines (see ``cluster_topology``).
    deadlines: str


def user_keys(prefix: str, userid: str, cluster: bool = False) -> UserKeys:
    """``userid``'s keys; ``cluster`` names the few that differ in a Cluster (above)."""
    key = prefix + userid
    base = _tagged_base(key, cluster)
    return UserKeys(key, base + ":devices", base + ":online", slot(key) % PARTITIONS,
                    base + ":deadlines")


def control_channel(prefix: str) -> str:
    """The channel every instance hears, for what is not one user's change
    (ending a user's streams everywhere). It starts with ``{``, so it is no
    user's channel (``REDIS_PREFIX + userid``) and none of their other keys
    (which all end in ``:devices``, ``:online`` or ``:deadlines``)."""
    return "{" + prefix + "}:control"


def partition_keys(prefix: str, partition: int) -> tuple[str, str]:
    """A deadline partition's sorted set and its online-users count.

    Tagged, so a Cluster spreads partitions over slots; a user's keys all
    end in ``:devices``, ``:online`` or ``:deadlines``, so none of them is one of these.
    """
    deadlines = "{" + f"{prefix}deadlines:{partition}" + "}"
    return deadlines, deadlines + ":count"
