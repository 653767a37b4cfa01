"""Logging, metrics, health and status: what operators see of the proxy."""
