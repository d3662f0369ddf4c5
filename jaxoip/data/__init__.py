"""Image data: the MNIST IDX loader, the standardization, and input images given by spec, file or array."""
