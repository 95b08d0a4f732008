"""The Run API: a trained run as an object an application calls (``Run``, ``load_run``), and the
item index it ranks through. ``predict``, the HTTP service and notebooks sit on it."""
