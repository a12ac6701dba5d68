"""How much of the JPEG deblocker's output a file of a given quality takes (torch-free).

The deblockers are trained on qualities 0-50. On lighter compressions their output is smoother than
the photo was: at quality 90 it scores 2.3 dB below the JPEG itself, at 95 15 dB below (CBSD68). The
deblock stage therefore blends the network's output with its input, as the denoise strength does,
by the quality read from the file (models.jpeg_info): ``output = input + s * (network - input)``.

``KNOTS`` are the best strengths, in steps of 0.1, on 80 held-out photos (CSun_Hays80, halved and
cropped to 384x256) through the service's color deblock (both networks), interpolated linearly in
between. Checked on CBSD68: within 0.06 dB of that set's own best at every quality measured from 30
to 90, and above both the JPEG and the full network's output. At 95 the held-out photos gained 0.10 dB
at strength 0.1 while CBSD68 lost 1.41 dB, so a file of quality 95 or more is left as it is. The
measurements: docs/engine.md (deblock strength).
"""

from __future__ import annotations

import numpy as np

# (JPEG quality, strength); below the first knot 1.0 (the network as trained), above the last 0.0
KNOTS: tuple[tuple[int, float], ...] = (
    (20, 1.0), (30, 0.9), (40, 0.9), (50, 0.8), (60, 0.7), (65, 0.7), (70, 0.6), (75, 0.5),
    (80, 0.5), (85, 0.4), (90, 0.3), (95, 0.0))


def for_quality(quality: int | None) -> float:
    """The deblock strength for a JPEG of ``quality`` (1..100); 1.0 when the quality is unknown (the
    pixels did not come from a JPEG file, or they were restored since)."""
    if quality is None:
        return 1.0
    qs, ss = zip(*KNOTS, strict=True)
    return round(float(np.interp(quality, qs, ss)), 2)
