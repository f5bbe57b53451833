"""Image data: the dataset registry, file formats, verified downloads and the three tasks built on them."""
