"""The one way tests build an ``X-User-Claim`` (SPEC §1)."""

from __future__ import annotations

import json


def claim(userid: str, clientid: str | None = "c1", **more: object) -> str:
    """The header's value: ``userid``, ``clientid`` unless None, and any other claims."""
    claims: dict[str, object] = {"userid": userid}
    if clientid is not None:
        claims["clientid"] = clientid
    claims.update(more)
    return json.dumps(claims)


def claim_header(userid: str, clientid: str | None = "c1", **more: object) -> dict[str, str]:
    """``{"X-User-Claim": claim(...)}``, to pass as a request's headers."""
    return {"X-User-Claim": claim(userid, clientid, **more)}
