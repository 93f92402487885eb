"""heartbeat: last-seen presence, recorded by ping and streamed over Server-Sent Events."""
