"""of-cubic at the volume ends: the clamped outer knot's flow spans two intervals, not three.

On a pure translation every correctly warped knot lands on the same image, so of-cubic equals
of-linear up to resampling noise; a mis-scaled outer knot shows as a difference confined to
the first and last intervals. Real FIB-SEM texture (the bundled FlyEM crop), shifted."""
import cv2
import numpy as np
import tifffile

from napari_zup import reconstruct
from napari_zup._sample_data import sample_path


def test_first_and_last_intervals_are_as_good_as_the_middle_ones():
    base = tifffile.imread(str(sample_path()))[60].astype(np.float32)

    def shifted(s):
        m = np.float32([[1, 0, s], [0, 1, 0.6 * s]])
        return cv2.warpAffine(base, m, base.shape[::-1], flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REFLECT)

    f, n = 4, 6
    knots = np.stack([shifted(3.0 * k) for k in range(n)]).clip(0, 255).round().astype(np.uint8)
    p = {"winsize": 31, "levels": 3}
    cub = reconstruct(knots, "of-cubic", f, method_params=p).astype(float)
    lin = reconstruct(knots, "of-linear", f, method_params=p).astype(float)
    c = slice(48, -48)
    diff = [np.abs(cub[k * f + 1:(k + 1) * f] - lin[k * f + 1:(k + 1) * f])[:, c, c].mean()
            for k in range(n - 1)]
    middle = max(diff[1:-1])
    # measured: ends 0.05, middle 0.07-0.08; with the /3 scaling the ends were 0.44
    assert diff[0] <= 1.5 * middle and diff[-1] <= 1.5 * middle, diff
