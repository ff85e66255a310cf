"""What both training stages share, one concern a module (this file imports none of them):

- `model`: the model being trained (`TrainingModel`) and its builders;
- `rng`: seeding, and the RNG states a resume checkpoint saves;
- `spec`: what one stage's run is (`RunSpec`);
- `optimisation`: what a step updates (`Optimisation`: model, optimizer, fp16 scaler);
- `resume`: the run fingerprint, the resume point, writing and reading the resume checkpoint;
- `loader`: the manifest's split, the image-cache decision, the epochs' batches and the DataLoader;
- `monitor`: the held-out mP@5 logged each epoch;
- `nonfinite`: the NaN/inf loss watch;
- `loop`: the loss of a batch, the epochs, and the stage's final checkpoint.
"""
