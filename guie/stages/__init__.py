"""The pipeline's stages, one module each, named as in dvc.yaml; no stage module imports another.

download -> weights -> manifest -> train (one per train.stages entry) -> pca -> export -> verify, evaluate
"""
