"""Launchers of real processes (the daemon, Redis, Kafka) for tests, demos and benches."""
