"""Running heartbeat: the twistd plugin's tap, the service tree, settings, workers, systemd, logs, metrics."""
