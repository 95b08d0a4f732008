"""The data pipeline as a library, one module per step; ``python -m recsys.dataset`` runs it.

``sources`` (registry, download, md5) -> ``readers`` / ``custom`` (raw files -> interactions and
items) -> ``interim`` (clean, interim tables) -> ``split`` (filter, index, order, split -> the
processed files of :mod:`recsys.processed`).
"""
