"""params.yaml, one module per section, so a stage imports (and dvc.yaml lists) only what it reads.

`load` composes the sections into `Params`, validates the whole file and is imported by the CLI
only; `fingerprint` hashes what shapes an artifact.
"""
