"""Picture canonicalization: decode to pixels with Pillow, encode a fresh file from the pixels alone.

Whatever the upload carried besides pixels (PNG text chunks tEXt/zTXt/iTXt, private chunks,
eXIf, iCCP, JPEG APPn segments with EXIF/XMP/ICC, COM comments, thumbnails, extra frames,
unused palette entries, bytes after IEND/EOI) is not in the canonical file: a new image is
built from the decoded pixels (after applying the EXIF orientation, so it looks as shown) and
saved with no metadata. JPEG is re-encoded at a fixed quality. Decompression bombs are refused
before decoding: Pillow's ``MAX_IMAGE_PIXELS`` and the airlock's own cap (``MAX_PIXELS``).
Transparency: alpha is quantized to 16 levels (multiples of 17) and every pixel left fully
transparent gets colour 0,0,0: the colour under an invisible pixel (RGBA, LA, or a palette with a
tRNS chunk) is not content anyone saw, and the attacker's review hid 7 kB of rows there. Alpha
below 9 (all but invisible) becomes 0 with it, and the low bits of alpha cannot carry data.
Pixels themselves can still hide data (steganography); that is what reviewers look at and what
the JPEG re-encoding disturbs, not what this module claims to remove.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from sandbox.errors import BadRequest

MAX_PIXELS = 25_000_000
MAX_SIDE = 20_000
JPEG_QUALITY = 90
FORMATS = {"png": "PNG", "jpeg": "JPEG"}
PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALPHA_STEP = 17  # 16 alpha levels: 0, 17, ..., 255

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def png_extras(data: bytes) -> list[str]:
    """Names of the non-pixel chunks of a PNG, and bytes after IEND."""
    pos, out = len(PNG_MAGIC), []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        ctype = data[pos + 4: pos + 8]
        pos += 12 + length
        if ctype == b"IEND":
            if pos < len(data):
                out.append(f"{len(data) - pos:,} bytes after IEND")
            break
        if ctype not in PNG_CRITICAL:
            out.append(ctype.decode("latin-1"))
    return out


def jpeg_extras(data: bytes) -> list[str]:
    """Names of the APPn and COM segments of a JPEG (up to the start of scan), and bytes after EOI."""
    pos, out = 2, []
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        (length,) = struct.unpack(">H", data[pos + 2: pos + 4])
        if 0xE0 <= marker <= 0xEF:
            body = data[pos + 4: pos + 4 + 12]
            tag = body.split(b"\x00", 1)[0].decode("latin-1", errors="replace")[:12]
            if not (marker == 0xE0 and tag == "JFIF"):
                out.append(f"APP{marker - 0xE0}" + (f" ({tag})" if tag else ""))
        elif marker == 0xFE:
            out.append("COM comment")
        pos += 2 + length
    end = data.rfind(b"\xff\xd9")
    if end != -1 and end + 2 < len(data):
        out.append(f"{len(data) - end - 2:,} bytes after EOI")
    return out


def _target_mode(im: Image.Image, kind: str) -> str:
    """RGBA when the picture has transparency (PNG), L when it is grey, else RGB: no palette survives."""
    if kind == "png" and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
        return "RGBA"
    if im.mode in ("1", "L", "I;16", "I", "F"):
        return "L"
    return "RGB"


def _clear_transparent(im: Image.Image) -> tuple[Image.Image, int]:
    """An RGBA picture with alpha quantized and the colour of fully transparent pixels zeroed;
    and how many transparent pixels had a colour that was dropped."""
    r, g, b, a = im.split()
    alpha = a.point([((v + ALPHA_STEP // 2) // ALPHA_STEP) * ALPHA_STEP for v in range(256)])
    shown = alpha.point([255 if v else 0 for v in range(256)])  # 255 where visible at all
    black = Image.new("L", im.size, 0)
    rgb = [Image.composite(c, black, shown) for c in (r, g, b)]
    hidden_colour = Image.merge("RGB", (r, g, b)).convert("L").point([255 if v else 0 for v in range(256)])
    dropped = Image.composite(black, hidden_colour, shown).histogram()[255]
    return Image.merge("RGBA", (*rgb, alpha)), dropped


def _refuse(why: str) -> BadRequest:
    return BadRequest(f"the picture cannot be decoded: {why}", code="bad_image")


def canonical_image(kind: str, data: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    """(canonical bytes, findings) of a png or jpeg file."""
    from sandbox.exports.checks import result

    fmt = FORMATS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = im.size
            if width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
                raise _refuse(f"{width}×{height} pixels is over the cap of {MAX_PIXELS:,} pixels")
            frames = getattr(im, "n_frames", 1)
            im.load()
            shown = ImageOps.exif_transpose(im)
            mode = _target_mode(shown, kind)
            pixels = shown.convert(mode)
            dropped = 0
            if mode == "RGBA":
                pixels, dropped = _clear_transparent(pixels)
            fresh = Image.frombytes(mode, pixels.size, pixels.tobytes())
        except BadRequest:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _refuse(f"decompression bomb ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                struct.error, MemoryError) as exc:
            raise _refuse(type(exc).__name__) from None
    out = io.BytesIO()
    if kind == "png":
        fresh.save(out, format="PNG", optimize=False, compress_level=9)
    else:
        fresh.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False,
                   subsampling="4:2:0")
    extras = png_extras(data) if kind == "png" else jpeg_extras(data)
    if frames > 1:
        extras.append(f"{frames - 1} frame(s) after the first")
    if dropped:
        extras.append(f"the colour of {dropped:,} fully transparent pixel(s)")
    if extras:
        finding = result("canonical.metadata", "review",
                         "not in the released picture (rebuilt from its pixels): " + ", ".join(extras[:30])
                         + (f", … {len(extras) - 30} more" if len(extras) > 30 else ""),
                         dropped=extras[:200])
    else:
        finding = result("canonical.metadata", "pass", "pixels only: nothing besides the picture was uploaded")
    return out.getvalue(), [finding]
