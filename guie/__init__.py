"""guie: from raw image datasets to a scored Google Universal Image Embedding submission."""

__version__ = "0.1.0"
