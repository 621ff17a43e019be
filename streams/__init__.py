"""tickflow's platform: the agent runtime, settings, topics, sources, producer and CLI."""
