"""Task distributions: the synthetic quadratic (closed form), MNIST-1D and Omniglot."""
