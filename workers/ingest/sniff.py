"""What a file's first bytes say it is. Used to refuse archives hidden inside archives and to tell a person
what they uploaded when it is not an image; the decision to accept an image is Pillow's, not this table's."""

from __future__ import annotations

# Prefixes of compressed or archive formats we refuse to unpack a second time.
ARCHIVE_SIGNATURES: dict[bytes, str] = {
    b"PK\x03\x04": "zip archive",
    b"PK\x05\x06": "zip archive",
    b"PK\x07\x08": "zip archive",
    b"\x1f\x8b": "gzip archive",
    b"BZh": "bzip2 archive",
    b"\xfd7zXZ\x00": "xz archive",
    b"7z\xbc\xaf'\x1c": "7z archive",
    b"Rar!\x1a\x07": "rar archive",
    b"\x28\xb5\x2f\xfd": "zstd archive",
    b"LZIP": "lzip archive",
}

ARCHIVE_EXTENSIONS = frozenset(
    {
        ".zip",
        ".tar",
        ".gz",
        ".tgz",
        ".bz2",
        ".tbz",
        ".tbz2",
        ".xz",
        ".txz",
        ".7z",
        ".rar",
        ".zst",
        ".lz",
        ".lzma",
        ".z",
        ".jar",
        ".cpio",
        ".iso",
    }
)

_OTHER_SIGNATURES: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
    b"%PDF": "PDF document",
    b"8BPS": "Photoshop document",
    b"\x00\x00\x01\x00": "Windows icon",
    b"\xff\x0a": "JPEG XL image",
    b"\x00\x00\x00\x0cJXL ": "JPEG XL image",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000 image",
}

_ISO_BRANDS: dict[bytes, str] = {  # ISO base media files: bytes 4..12 are "ftyp" + brand
    b"heic": "HEIC image",
    b"heix": "HEIC image",
    b"mif1": "HEIF image",
    b"avif": "AVIF image",
    b"isom": "MP4 video",
    b"mp42": "MP4 video",
    b"qt  ": "QuickTime video",
}


def archive_kind(data: bytes) -> str | None:
    """The archive format ``data`` starts with (a tar is recognised by its ``ustar`` header), or None."""
    for magic, kind in ARCHIVE_SIGNATURES.items():
        if data.startswith(magic):
            return kind
    if data[257:262] == b"ustar":
        return "tar archive"
    return None


def describe(data: bytes) -> str | None:
    """A short human name for what ``data`` looks like ("HTML", "text", "PDF document"), or None."""
    if kind := archive_kind(data):
        return kind
    for magic, kind in _OTHER_SIGNATURES.items():
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and (kind := _ISO_BRANDS.get(data[8:12])):
        return kind
    return _describe_text(data[:1024])


def _describe_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:  # the 1024-byte cut may have split a multi-byte character
            text = head[:-3].decode("utf-8-sig")
        except UnicodeDecodeError:
            return None
    if any(ch < " " and ch not in "\t\r\n\f" for ch in text):
        return None
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered:
        return "HTML"
    if lowered.startswith("<svg") or (lowered.startswith("<?xml") and "<svg" in lowered):
        return "SVG drawing"
    if lowered.startswith("<?xml"):
        return "XML"
    return "text"
