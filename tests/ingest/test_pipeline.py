"""The pieces composed the way the ingest task will: archive -> decode -> canonical copy -> split."""

from __future__ import annotations

import io
from collections import Counter

from tests.ingest.factories import IMAGE_LIMITS, LIMITS, digits_tree, encode, make_zip, photo
from workers.ingest import (
    ImageRejected,
    Rejection,
    canonical_copy,
    decode_image,
    read_archive,
    stratified_split,
)


def test_zip_to_split() -> None:
    entries = [
        *digits_tree(classes=(0, 1, 2), per_class=10, prefix="upload/"),
        ("upload/cats/chelsea.jpg", encode(photo("chelsea"), "JPEG")),
        ("upload/cats/notes.png", b"remember to feed the cat"),
        ("upload/cats/chelsea-copy.jpg", encode(photo("chelsea"), "JPEG")),
        ("upload/../escape.png", encode(photo("coffee"))),
    ]
    contents = read_archive(io.BytesIO(make_zip(entries)), LIMITS)
    decoded: dict[str, str] = {}
    undecodable: list[Rejection] = []
    for member in contents.members:
        try:
            image = decode_image(member.data, member.name, IMAGE_LIMITS)
        except ImageRejected as e:
            undecodable.append(Rejection(member.name, e.reason))
            continue
        assert canonical_copy(image.image, 320)
        decoded.setdefault(image.sha256, member.label)  # dedupe by content
    rejected = contents.rejected + undecodable  # complete now that the members are exhausted
    assert Counter(decoded.values()) == Counter({"0": 10, "1": 10, "2": 10, "cats": 1})
    assert {r.file: r.reason.split(" (")[0] for r in rejected} == {
        "upload/cats/notes.png": "file content is not a supported image format",
        "upload/../escape.png": "the path contains '..' and would point outside the archive",
    }
    splits = stratified_split(list(decoded.items()), 0.1, 0.2, seed=0)
    assert Counter(splits.values()) == Counter(train=22, val=3, test=6)
