"""The ``gpubraid`` command line: train, predict, info."""
