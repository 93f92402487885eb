"""What heartbeat knows: presence values, the hub, streams and their framing, identity rules.

Nothing here speaks HTTP or knows a store's wire format; the layers above
(store, web, daemon) build on it, never the reverse.
"""
