"""Where presence is kept and how changes travel between instances: the store interface and its stores."""
