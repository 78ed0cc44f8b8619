"""List the CUDA images embedded in an ELF file's .nv_fatbin section: `sm_XX` machine code and `compute_XX` PTX.

    python scripts/fatbin_archs.py path/to/_C.so [--expect sm_80,sm_90,compute_90]

The release check (scripts/build_release_wheel.sh) uses it to show what a wheel carries without a CUDA toolkit.
The fatbin container is a 16-byte header (magic 0xBA55ED50, version, header size, payload size) followed by
entries, each with a header holding its kind (1 PTX, 2 ELF machine code), header size, payload size, at byte 24
the format version (minor, major: the PTX ISA version of a PTX entry, which sets the oldest driver that can JIT
it) and at byte 28 the SM version. One container per CUDA translation unit, and one for the CUDA runtime's own
kernels when it is linked statically. Needs pyelftools (an auditwheel dependency).
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections import Counter

from elftools.elf.elffile import ELFFile

MAGIC = 0xBA55ED50
KINDS = {1: "compute", 2: "sm"}


def fatbin_images(data: bytes) -> list[tuple[str, str]]:
    """(image, version) per entry, e.g. ("sm_90", "format 1.8") or ("compute_120", "PTX ISA 8.8")."""
    images = []
    offset = 0
    while offset + 16 <= len(data):
        magic, _version, header_size, size = struct.unpack_from("<IHHQ", data, offset)
        if magic != MAGIC:
            offset += 8  # containers are 8-byte aligned; skip padding between them
            continue
        entry, end = offset + header_size, offset + header_size + size
        while entry < end:
            kind, _unknown, entry_header, entry_size = struct.unpack_from("<HHIQ", data, entry)
            minor, major, arch = struct.unpack_from("<HHI", data, entry + 24)
            label = "PTX ISA" if kind == 1 else "format"
            images.append((f"{KINDS.get(kind, f'kind{kind}')}_{arch}", f"{label} {major}.{minor}"))
            entry += entry_header + entry_size
        offset = end
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--expect", default=None, help="comma-separated images that must all be present")
    args = parser.parse_args()
    with open(args.path, "rb") as fh:
        section = ELFFile(fh).get_section_by_name(".nv_fatbin")
        data = section.data() if section is not None else b""
    counts = Counter(fatbin_images(data))
    order = sorted(counts, key=lambda entry: (entry[0].startswith("compute"), int(entry[0].rsplit("_", 1)[1])))
    for image, version in order:
        print(f"  {image:12} {version:14} in {counts[image, version]} translation unit(s)")
    if not counts:
        print("  no CUDA images")
    if args.expect:
        present = {image for image, _ in counts}
        missing = [image for image in args.expect.split(",") if image not in present]
        if missing:
            print(f"missing CUDA images: {', '.join(missing)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
