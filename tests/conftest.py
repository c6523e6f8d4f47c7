from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY = SHARED / "parity"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph, 8-bit sRGB RGB (the parity input if present, else a bundled example)."""
    src = PARITY / "coffee_3000x2000.jpg"
    if not src.exists():
        candidates = sorted(EXAMPLES.glob("*.jpg"))
        if not candidates:
            pytest.skip("no photograph available")
        src = candidates[0]
    return _read_rgb(src)


@pytest.fixture(scope="session")
def small_photo(photo) -> np.ndarray:
    """The photograph reduced to 450×300 (area averaging)."""
    import cv2

    return cv2.resize(photo, (450, 300), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def read_rgb():
    return _read_rgb


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    """The shared parity photograph (3000×2000), RGB uint8; skipped where ../shared/parity is absent."""
    src = PARITY / "coffee_3000x2000.jpg"
    if not src.exists():
        pytest.skip("parity references not available")
    return _read_rgb(src)


def make_photo_bucket(tmp: Path, photo: np.ndarray) -> Path:
    """Odd-sized inputs made from a real photograph: 1013×777 JPEG, 2000×3001 PNG, a grey PNG in a subfolder."""
    src = tmp / "bucket"
    (src / "sub dir").mkdir(parents=True)
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(src / "odd.jpg"), cv2.resize(bgr, (777, 1013), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(src / "wide.png"), cv2.resize(bgr, (3001, 2000), interpolation=cv2.INTER_CUBIC))
    grey = cv2.cvtColor(cv2.resize(bgr, (640, 430)), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(src / "sub dir" / "grey.png"), grey)
    return src
