"""Serving a trained run: the public run API, the item index and the HTTP service."""
