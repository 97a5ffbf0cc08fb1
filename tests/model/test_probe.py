from shapes import probe


def test_probe_reads_the_reconstruction_and_each_start(model_dir, classifier):
    rows = probe.probe(str(model_dir), classifier, n=8, starts=[0.2, 1.0], steps=10, guidance=5.0)
    assert [start for start, _, _ in rows] == [None, 199, 999]  # trailing DDIM: 999, 899, ..., 99
    reconstruction_shape, reconstruction_color = rows[0][1:]
    assert reconstruction_shape >= 0.75 and reconstruction_color == 1.0  # the VAE keeps what an image shows
    assert all(0.0 <= shape <= 1.0 and 0.0 <= color <= 1.0 for _, shape, color in rows)
