"""What tests share, by what it is.

- ``claims``: the one ``X-User-Claim`` builder.
- ``waiting``: the one ``wait_for`` (poll until true, or fail).
- ``processes``: the real daemon and redis-server, ``free_port``, ``need_binary``.
- ``clients``: a ping, a GET, an SSE reader and a ping load over real sockets.
- ``browsers``: headless chromium through Playwright, and the checkout served as a site.
- ``fixtures``: the pytest fixtures over those processes (imported by ``conftest.py``).
- ``in_memory``: the real site over in-memory transports on a fake clock.
- ``stub_http``: requests to the Klein app through treq's StubTreq, settled at once.
- ``sqlite_writer``: the embedded store's writer run at once (and made to fail).
- ``webhook_receiver``: a real webhook endpoint verifying every signature.
- ``backend_calls``: the app's backend's requests, and the change feed read and applied
  as a backend does.
- ``redis_ops``: certificates, Sentinels and a silent proxy for Redis in production.
- ``redis_checks``: checks of a real redis-server that several test files make.
- ``redis_cluster``: a real Redis Cluster, moving a slot by hand, users on every master.
- ``redis_stores``: Redis stores in the test's own reactor (``make_redis_store``, a
  fixture), their ``Recorder`` listener, and ``until`` (``wait_for`` in the reactor).
- ``vanish``: a stream's client that vanishes without a FIN, in a private network.
"""
