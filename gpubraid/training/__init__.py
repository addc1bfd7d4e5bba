"""Training: the settings schema, the methods (serial, exact, one-shot), optimisers, the trainer and
its report."""
