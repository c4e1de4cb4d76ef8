"""A ``POST /predict`` request: its images (multipart files or JSON base64), checked against the
server's limits and decoded with predict.py's own preprocessing, and its budget.

Every refusal is a :class:`RequestError` with the HTTP status and one message; the server
answers it as ``{"error": message}`` and goes on serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..errors import BudgetError, ConfigError
from ..evaluate.pareto import parse_flops


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and one message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may hold (``--max-images``, ``--max-image-bytes``, ``--max-image-pixels``)."""

    max_images: int
    max_image_bytes: int
    max_image_pixels: int

    @property
    def max_body_bytes(self) -> int:
        # base64 inflates by 4/3; multipart and JSON framing add a little
        return self.max_images * (self.max_image_bytes * 4 // 3 + 4096) + 65536


@dataclass
class Budget:
    """A request's ``budget_ms`` / ``budget_flops`` (None when not given)."""

    latency_ms: Optional[float] = None
    flops: Optional[float] = None

    @property
    def given(self) -> bool:
        return self.latency_ms is not None or self.flops is not None


def parse_budget(budget_ms: Any, budget_flops: Any) -> Budget:
    """The budget fields of a request, checked: ``budget_ms`` a positive number of milliseconds,
    ``budget_flops`` what ``eval.py --budget-flops`` takes (``2.5G``, ``800M``, a number)."""
    latency = None
    if budget_ms not in (None, ""):
        try:
            latency = float(budget_ms)
        except (TypeError, ValueError):
            latency = math.nan
        if isinstance(budget_ms, bool) or not math.isfinite(latency) or latency <= 0:
            raise RequestError(400, f"budget_ms {budget_ms!r} is not a positive number of milliseconds")
    flops = None
    if budget_flops not in (None, ""):
        try:
            flops = parse_flops(budget_flops)
        except ConfigError:
            raise RequestError(400, f"budget_flops {budget_flops!r} is not a number: use e.g. 2.5G or 800M") from None
    return Budget(latency, flops)


def pick_budget_network(rows: list[dict], budget: Budget, has_latency: bool) -> int:
    """The cfg_id eval.py ``--budget-latency`` / ``--budget-flops`` picks for ``budget``."""
    from ..evaluate.pareto import pick

    if budget.latency_ms is not None and not has_latency:
        raise RequestError(
            400, "budget_ms needs the networks' latencies: sweep with eval.py --measure-latency, or use budget_flops"
        )
    try:
        return int(pick(rows, budget.flops, budget.latency_ms)["cfg_id"])
    except BudgetError as e:
        message = str(e).replace("--budget-flops", "budget_flops").replace("--budget-latency", "budget_ms")
        raise RequestError(422, message) from None


def _decode_base64(text: Any, index: int) -> bytes:
    if not isinstance(text, str):
        raise RequestError(400, f"images[{index}] is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"images[{index}] is not valid base64") from None


def json_images(body: bytes) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """``{"images": [BASE64 | {"name": N, "data": BASE64}, ...], "budget_ms": .., "budget_flops": ..}``:
    the (name, bytes) of each image and the other fields."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise RequestError(400, 'the JSON body needs "images": a list of base64 strings')
    images = []
    for i, item in enumerate(payload["images"]):
        name, data = (item.get("name", str(i)), item.get("data")) if isinstance(item, dict) else (str(i), item)
        images.append((str(name), _decode_base64(data, i)))
    return images, payload


def check_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise RequestError(400, "no images in the request: send multipart files 'images' or JSON base64 'images'")
    if count > limits.max_images:
        raise RequestError(413, f"{count} images in one request: at most {limits.max_images} (--max-images)")


def decode_image(name: str, data: bytes, transform: Callable, limits: Limits) -> torch.Tensor:
    """One image as predict.py reads it (:func:`snnet.evaluate.predict.to_rgb`, then the
    evaluation transform): a uint8 CHW tensor. The size is checked from the header, before
    the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    from ..evaluate.predict import to_rgb

    if len(data) > limits.max_image_bytes:
        raise RequestError(
            413, f"image '{name}' has {len(data)} bytes: at most {limits.max_image_bytes} (--max-image-bytes)"
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > limits.max_image_pixels:
                raise RequestError(
                    413,
                    f"image '{name}' is {width}x{height} pixels: at most {limits.max_image_pixels} (--max-image-pixels)",
                )
            image = to_rgb(im)
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        what = "a truncated or damaged image" if not isinstance(e, UnidentifiedImageError) else "not an image"
        raise RequestError(
            400, f"cannot read image '{name}': {what} ({type(e).__name__}); send JPEG, PNG, ..."
        ) from None
    return torch.as_tensor(transform(image))
