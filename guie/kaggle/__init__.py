"""Kaggle: `guie submit`, `guie status` and Kaggle downloads, all through one lazily built client."""
