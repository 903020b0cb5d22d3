"""dt package."""
