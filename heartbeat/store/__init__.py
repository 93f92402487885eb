"""Where presence is kept and how changes travel between instances: the stores of core's `Store` protocol."""
