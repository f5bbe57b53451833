"""File-format readers (IDX, CIFAR-10 batches, ImageNet-32 npz; your own .npz arrays and image folders)."""
