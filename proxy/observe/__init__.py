"""Logging, metrics, the accounting of each request into both, health and status: what
operators see of the proxy."""
