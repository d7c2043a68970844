"""Bundles, provenance, signing and verification, the MLflow registry and trace."""
