"""Latent-reasoning methods, selected with ``method=<name>`` (``conf/method/<name>.yaml``)."""
