"""Data: the examples (peaks, MNIST, Indian Pines), your arrays and .npz files, mini-batches, and
the distribution of a data set over the ranks."""
