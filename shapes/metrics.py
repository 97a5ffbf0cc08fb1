"""Image-quality numbers of the yardstick: prompt accuracy, Fréchet distance, PSNR and SSIM.

* prompt accuracy: the share of images in which the classifier reads each attribute the
  prompt named, and all of them at once (an attribute the prompt left out is not judged);
* reading agreement: the share of images the classifier reads exactly as it reads their
  reference (the FP32 image of the same seed and prompt), every attribute: fidelity to
  the FP32 model at the level of what images show, paired image by image;
* Fréchet distance between two image sets on the classifier's penultimate features (an
  FID whose features were trained on this data set, so it sees what matters here);
* PSNR and SSIM of an image against a reference (the FP32 image of the same seed and prompt).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import linalg
from scipy.ndimage import gaussian_filter


def prompt_accuracy(named: Sequence[Mapping[str, str]], read: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Per attribute, the share of images (among those whose prompt named it) read as named; ``"overall"``:
    the share of images in which every named attribute was read as named."""
    if len(named) == 0:
        raise ValueError("prompt accuracy needs at least one image")
    hits: dict[str, list[bool]] = {}
    overall = []
    for i, attributes in enumerate(named):
        right = [read[name][i] == value for name, value in attributes.items()]
        for (name, _), ok in zip(attributes.items(), right):
            hits.setdefault(name, []).append(ok)
        overall.append(all(right))
    result = {name: float(np.mean(ok)) for name, ok in sorted(hits.items())}
    result["overall"] = float(np.mean(overall))
    return result


def reading_agreement(read: Mapping[str, Sequence[str]], reference: Mapping[str, Sequence[str]]) -> float:
    """The share of images whose every reading (shape, color, ...) equals their reference image's."""
    if set(read) != set(reference) or len({len(v) for v in (*read.values(), *reference.values())}) != 1:
        raise ValueError("readings and reference must name the same attributes, for the same number of images")
    n = len(next(iter(read.values())))
    if n == 0:
        raise ValueError("reading agreement needs at least one image")
    same = [all(read[name][i] == reference[name][i] for name in read) for i in range(n)]
    return float(np.mean(same))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (n, d)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (n >= 2, d) feature sets of the same d, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Fewer images than features make both covariances singular; a small ridge keeps sqrtm stable.
    eps = np.eye(len(cov_a)) * 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real)
    return float(max(value, 0.0))


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images; ``inf`` when they are identical."""
    _check_pair(image, reference)
    mse = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(image: np.ndarray, reference: np.ndarray, sigma: float = 1.5) -> float:
    """Structural similarity of uint8 (h, w, 3) images (Gaussian window, as Wang et al. 2004), channel mean."""
    _check_pair(image, reference)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = image.astype(np.float64), reference.astype(np.float64)

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma=(sigma, sigma, 0), truncate=3.5)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def _check_pair(image: np.ndarray, reference: np.ndarray) -> None:
    if image.shape != reference.shape:
        raise ValueError(f"images differ in shape: {image.shape} vs {reference.shape}")
