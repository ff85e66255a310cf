"""The pipeline's stages, one module each, named as in dvc.yaml; no stage module imports another.

download -> weights -> manifest -> train_head -> train_finetune -> pca -> export -> verify, evaluate
"""
