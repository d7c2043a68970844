"""Orchestration and entry points: the pipeline config, Prefect flows, gates, the command line."""
