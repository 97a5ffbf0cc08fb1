import math

import numpy as np
import pytest

from shapes import metrics


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)


def test_psnr(image):
    assert metrics.psnr(image, image) == math.inf
    shifted = np.clip(image.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((shifted.astype(float) - image) ** 2)
    assert metrics.psnr(shifted, image) == pytest.approx(10 * math.log10(255**2 / mse))


def test_ssim(image):
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image + np.random.default_rng(1).normal(0, 40, image.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(noisy, image) < 0.9
    with pytest.raises(ValueError, match="shape"):
        metrics.ssim(image, image[:32])


def test_frechet_distance():
    features = np.random.default_rng(0).normal(size=(300, 16))
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-3)
    assert metrics.frechet_distance(features, features + 1.0) == pytest.approx(16.0, rel=1e-3)
    with pytest.raises(ValueError):
        metrics.frechet_distance(features, features[:, :8])


def test_prompt_accuracy_judges_only_named_attributes():
    named = [{"shape": "circle", "color": "red"}, {"shape": "star", "color": "blue", "background": "white"}]
    read = {"shape": ["circle", "star"], "color": ["red", "green"], "background": ["black", "white"]}
    assert metrics.prompt_accuracy(named, read) == {
        "background": 1.0,
        "color": 0.5,
        "shape": 1.0,
        "overall": 0.5,
    }


def test_reading_agreement_counts_images_read_alike_in_every_attribute():
    reference = {"shape": ["circle", "star", "square"], "color": ["red", "blue", "green"]}
    read = {"shape": ["circle", "star", "circle"], "color": ["red", "green", "green"]}
    assert metrics.reading_agreement(read, reference) == pytest.approx(1 / 3)
    assert metrics.reading_agreement(reference, reference) == 1.0
    with pytest.raises(ValueError, match="same attributes"):
        metrics.reading_agreement({"shape": ["circle"]}, reference)
