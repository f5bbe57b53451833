"""File-format readers (IDX, CIFAR-10 batches, ImageNet-32 npz) behind hgsearch.data.registry."""
