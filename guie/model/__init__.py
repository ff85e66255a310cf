"""Model: the open_clip image tower, the embedding head, the margin loss and the embedder."""
