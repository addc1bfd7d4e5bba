"""Networks as ODEs: the batched step protocol and built-in steps (dense, conv, torch modules),
their self-test, openings, heads, parameter layouts, the network, its spec, and the single-process
serial reference."""
