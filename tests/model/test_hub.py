"""guie/model/hub.py: a tag's hub file, its cached copy, and the fetch command of the installed client."""

from __future__ import annotations

import os

from guie.model.hub import HubFile, cached_file, download_command, hub_client, hub_file


def _client_dir(tmp_path, *names):
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_the_installed_client_is_found_newest_first(tmp_path):
    assert hub_client(_client_dir(tmp_path, "huggingface-cli")) == "huggingface-cli"  # huggingface_hub < 1
    assert hub_client(_client_dir(tmp_path, "hf")) == "hf"  # both there: hf
    assert hub_client(str(tmp_path / "empty")) is None
    assert hub_client() == "hf"  # this venv's huggingface_hub (2.x) ships `hf` only


def test_the_command_names_the_tags_repository_file_and_cache(tmp_path):
    file = hub_file("ViT-B-32", "laion2b_s34b_b79k")
    assert file == HubFile("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_pytorch_model.bin")
    assert file.alternatives == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    cache = tmp_path / "hub dir"
    assert download_command(file, cache, "hf") == (
        f"hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_pytorch_model.bin --cache-dir '{cache}'"
    )
    assert download_command(file, cache, None).startswith("python -c 'from huggingface_hub import hf_hub_download;")
    assert hub_file("guie-tiny-vit", "") is None


def test_a_cached_copy_is_found_offline(tmp_path):
    file = HubFile("org/model", "open_clip_pytorch_model.bin")
    assert cached_file(file, tmp_path) is None
    snapshot = tmp_path / "models--org--model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--org--model" / "refs").mkdir()
    (tmp_path / "models--org--model" / "refs" / "main").write_text("a" * 40)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    assert cached_file(file, tmp_path) == snapshot / "open_clip_model.safetensors"
    assert os.path.isfile(cached_file(file, tmp_path))
