"""The Redis store's timeouts and batch sizes, the same for every topology."""

# Seconds a command may wait for its reply before the connection is dropped
# (and remade): a Redis that hangs must turn into 503s, not hung requests.
REPLY_TIMEOUT = 5.0
# Seconds between sweeps of the due deadlines, and the most entries one sweep
# takes from a partition (a full one is swept again at once).
SWEEP_INTERVAL = 1.0
SWEEP_BATCH = 128
# Milliseconds a batch's WAIT gives the replicas (REDIS_WAIT_REPLICAS) to
# acknowledge it: well inside REPLY_TIMEOUT, which would drop the connection.
WAIT_TIMEOUT_MS = 1000
# The most users one read_many.lua call reads: a resync of every watched user
# must not hold Redis, which runs one script at a time, for more than a few ms.
READ_CHUNK = 200
