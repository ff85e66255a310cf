"""Data: sources materialised under data/raw, the manifest table, datasets and transforms."""
