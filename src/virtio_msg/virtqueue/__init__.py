"""virtqueue package."""
