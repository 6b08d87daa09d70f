"""What every hosted provider shares: the check of what it answers, and its identity as a Target."""

from __future__ import annotations

import numpy as np

from vary.engines.base import ModelInfo
from vary.errors import ImageRejected, UpstreamFailure
from vary.imaging import PNG_MAGIC, ImageRules, MiB, encode_png, fit_to_size, load_provider_image

# The whole of one client request to a hosted route, retries and fallbacks included, unless configured.
DEFAULT_DEADLINE_SECONDS = 300.0
# One provider image, base64-decoded or downloaded: a 1536 px RGBA PNG is under 10 MiB.
MAX_IMAGE_BYTES = 16 * MiB
# A provider's images go through the checks of an input image (vary.imaging): a PNG, JPEG or WebP,
# square, at most 4096 px a side (so no decompression bomb), read whole.
OUTPUT_RULES = ImageRules(max_bytes=MAX_IMAGE_BYTES, max_side=4096)


class HostedProvider:
    """A provider served under a model name: no weights and no scheduler; `info` says what clients see."""

    remote = True
    info: ModelInfo

    @property
    def name(self) -> str:
        return self.info.id


def pngs_of_size(answers: list[bytes], size: int, retryable: bool) -> list[bytes]:
    """A provider's images as PNGs of exactly `size` px a side (gpt-image answers at 1024, for one).

    Each is checked as an input image is (vary.imaging): a readable PNG, JPEG or WebP, square, within
    the size limits. A PNG already of the size, 8-bit RGB or RGBA, is passed on as the provider made
    it; anything else (a JPEG or WebP always) is re-encoded as a PNG.
    """
    pngs = []
    for data in answers:
        try:
            image = load_provider_image(data, OUTPUT_RULES)
        except ImageRejected as exc:
            raise UpstreamFailure(
                f"the provider answered with an image vary does not accept ({exc.message})", retryable=retryable
            ) from None
        is_png = data.startswith(PNG_MAGIC)
        bit_depth, colour_type = (data[24], data[25]) if is_png else (0, 0)  # IHDR, checked when loaded
        if is_png and image.size == (size, size) and bit_depth == 8 and colour_type in (2, 6):
            pngs.append(data)
        else:
            pngs.append(encode_png(np.asarray(fit_to_size(image, size))))
    return pngs
