"""Camera RAW files (chosen by extension, `formats.RAW_EXTENSIONS`), developed by LibRaw through rawpy, the
optional `raw` extra: camera white balance, no auto-brightening, sRGB primaries and the sRGB tone curve,
16 bits, the orientation applied."""

from __future__ import annotations

import io

from phos_dask.errors import one_line
from phos_dask.imageio.decoder import Decoded, Header
from phos_dask.imageio.formats import ImageReadError, check_pixels


class RawDecoder:
    """LibRaw reads its own header: the size is checked when it has opened the file."""

    def info(self, data: bytes, name: str, kind: str | None, max_pixels: int | None) -> Header | None:
        return None

    def decode(self, data: bytes, name: str, kind: str | None, header: Header | None,
               max_pixels: int | None) -> Decoded:
        try:
            import rawpy
        except ImportError:
            raise ImageReadError(f"cannot read RAW file {name!r}: install the raw extra (pip install "
                                 "'phos_dask[raw]')") from None
        try:
            with rawpy.imread(io.BytesIO(data)) as raw:
                check_pixels(name, raw.sizes.width, raw.sizes.height, max_pixels)
                pixels = raw.postprocess(output_bps=16, use_camera_wb=True, no_auto_bright=True,
                                         output_color=rawpy.ColorSpace.sRGB, gamma=(2.4, 12.92))
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(f"cannot decode RAW file {name!r}: {one_line(e, 200)}") from None
        return Decoded(pixels, "RAW")


RAW = RawDecoder()
