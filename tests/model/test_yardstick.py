"""The yardstick itself: it must read rendered data-set images almost perfectly."""

import numpy as np
import pytest

from shapes import dataset, yardstick


def test_reads_held_out_images(classifier):
    scenes = [dataset.scene(i, yardstick.HELD_OUT_SEED, two_object_share=0.0) for i in range(5000, 5600)]
    accuracy = yardstick.accuracy(classifier, scenes)
    assert min(accuracy.values()) >= 0.98, accuracy


def test_features_are_the_penultimate_layer(classifier):
    images = dataset.images(range(4), seed=5)
    features = yardstick.features(classifier, images)
    assert features.shape == (4, yardstick.FEATURES)
    assert not np.allclose(features[0], features[1])


def test_rejects_images_of_the_wrong_size(classifier):
    with pytest.raises(ValueError, match="64, 64, 3"):
        yardstick.read(classifier, np.zeros((1, 32, 32, 3), np.uint8))
