"""The store interface, kept here for the Redis store's imports: it lives in
:mod:`heartbeat.core.store_contract`, beside the hub that reads it."""

from __future__ import annotations

from heartbeat.core.store_contract import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable"]
