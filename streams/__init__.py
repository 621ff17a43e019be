"""tickflow's platform: Faust app, settings, topics, sources, producer and CLI."""
