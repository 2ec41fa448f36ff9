"""Models: conv1d (MNIST-1D), conv4 (Omniglot), activation-heavy convnet and transformer block."""
