"""The HTTP service over the Run API (:mod:`recsys.api`): the app, micro-batcher and metrics."""
