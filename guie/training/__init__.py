"""What both training stages share: the model being trained, the loop, checkpoints and resume, the
held-out monitor."""
