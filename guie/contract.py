"""The scorer's contract, in one place: what Kaggle's scoring run loads, how it decodes and calls
it, and what it needs back (see the host's evaluation code and shared/guie-spec.md). verify,
export, evaluate, embedding, training's decoding and the submission notebook all read it here."""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # torch is imported where it is used: guie.params reads this module's constants
    import torch

MODEL_MEMBER = "saved_model.pt"  # the one file at the root of submission.zip (PyTorch flavour)
EMBEDDING_DIMS = 64  # the host flattens out[0]: [1, 64] float32, L2-normalised (it ranks by Euclidean distance)
TARGET_TORCH = "1.11"  # the scorer's torch: the archive must load there
SCORER_IMAGES = 205_000  # 5,000 queries + 200,000 index images
SCORER_LIMIT_S = 9 * 3600  # one scoring run may take at most 9 hours

# guie's own promise about an artifact: its float32 CPU output equals the eager pipeline within
# this (checked on export and by `guie verify --checkpoint`) ...
PARITY_TOLERANCE = 1e-5
# ... and a float16 or CUDA artifact, which rounds differently, keeps this cosine with it (tiny
# model in float16: cosine 0.999999, max |diff| 5e-4)
CONVERTED_MIN_COSINE = 0.999

ImageSource = str | os.PathLike | BinaryIO


def host_decode(source: ImageSource) -> torch.Tensor:
    """Decode exactly as the host does: PIL's RGB conversion, EXIF orientation NOT applied.
    Returns uint8 [3, H, W] at the stored size."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(source) as img:
        return pil_to_tensor(img.convert("RGB"))


def host_call(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The host's call on one decoded image: `torch.flatten(model(x)[0])` of uint8 [1, 3, H, W]."""
    import torch

    with torch.no_grad():
        return torch.flatten(model(image.unsqueeze(0))[0]).cpu()


def load_artifact(zip_path: str | os.PathLike) -> torch.jit.ScriptModule:
    """The model in a submission zip, loaded as the host loads it (a CUDA artifact onto the GPU
    when there is one, else mapped to the CPU), in eval mode."""
    import torch

    with zipfile.ZipFile(zip_path) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the host uses it
        model = torch.jit.load(
            io.BytesIO(zf.read(MODEL_MEMBER)), map_location=None if torch.cuda.is_available() else "cpu"
        )
    return model.eval()
