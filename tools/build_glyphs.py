#!/usr/bin/env python
"""Build the embedded "glyphs" benchmark asset from Debian's fonts.

    apt-get install fonts-noto-core fonts-dejavu-core
    .venv/bin/python tools/build_glyphs.py            # writes the asset and manifest in the package
    .venv/bin/python tools/build_glyphs.py --check    # rebuilds in memory, compares with the committed hash

Steps (every choice is deterministic; the parameters are in PARAMS and go into the manifest):

1. Fonts: every ``*.ttf`` under the Noto and DejaVu directories, sorted by file name. Excluded:
   placeholder fonts (a "last resort" font, recognised by its name or by a cmap that sends many code
   points to few glyphs) and fonts that are not text faces of a writing system (math, symbols,
   music, SignWriting, numeral-only fonts).
2. Characters: code points some font maps to a real glyph (glyph id ≠ 0), of Unicode category
   Lu/Ll/Lt/Lo, without a decomposition (no precomposed accented letters or compatibility forms).
   The alphabet is the script word(s) that start the character's Unicode name (``OLD ITALIC LETTER
   A`` → Old_Italic), taking the shortest known script prefix, so ``GEORGIAN MTAVRULI …`` belongs to
   Georgian. Unnamed code points (Tangut ideographs in Python's Unicode data) are skipped.
3. Rendering: each (character, covering font) is rendered alone (Pillow's basic layout, no shaping)
   at RENDER_SIZE px. It is rejected if it has no ink, if its ink is smaller than MIN_EXTENT of the
   font size on its longest side (marks, dots), or if it looks like the font's own .notdef box
   (similarity ≥ NOTDEF_THRESHOLD to the rendering of an unmapped code point). A kept rendering is
   cropped to its ink, padded to a square around the ink's centre, resized (box filter) so the
   longest side is EXTENT px and pasted in the centre of a SIZE×SIZE canvas: white ink on black.
4. Faces: among the kept renderings of a character, the first is the preferred font (Noto before
   DejaVu, plain Sans/Serif families before display variants, Sans before Serif, Regular first);
   up to MAX_FACES are chosen by farthest-point sampling on the similarity features, stopping when
   the farthest remaining face is within FACE_MIN_DISTANCE of a chosen one.
5. Near-duplicates (``near_duplicates`` in ``innerloop.data.images.glyphs``), on the canonical
   (first) renderings: ink is a pixel of at least 50 % grey; two characters overlap by ``s`` if at
   least a fraction ``s`` of each one's ink lies within one pixel (8-neighbourhood) of the other's,
   maximised over turning one by -8°, 0° or +8°. Pairs with ``s`` ≥ DEDUP_THRESHOLD (0.93) are
   near-duplicates. The threshold was set by looking at pairs: from 0.93 up they are the same
   letter in another script or case (O/o, S/s, Latin/Greek/Cyrillic twins), a slanted twin or the
   same shape with a tiny mark; below 0.92 they are mostly different letters (E/F 0.85, b/h 0.88).
   Alphabets are visited by first code point (Latin, Greek, Cyrillic, ... first), each in code-point
   order; a character is kept unless it is a near-duplicate of a character kept before, in any
   alphabet. An alphabet stops at MAX_PER_ALPHABET kept characters; alphabets left with fewer than
   MIN_PER_ALPHABET are dropped and the pass is repeated without them.
6. Split by alphabet: alphabets ordered by SHA-256 of ``SPLIT_SALT + name``; test takes alphabets
   until it holds TEST_FRACTION of the characters, then val until VAL_FRACTION, the rest is train.

The asset is an ``.npz`` written with fixed zip timestamps, so the same fonts, Pillow (FreeType) and
NumPy give the same bytes. The manifest also records a hash of the array contents, which does not
depend on the zlib build.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import re
import struct
import subprocess
import sys
import time
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from innerloop.data.images import glyphs as G

FONT_SOURCES = [
    # (Debian package, directory, licence recorded in the manifest)
    ("fonts-noto-core", "/usr/share/fonts/truetype/noto",
     "SIL Open Font License 1.1 (OFL-1.1); Copyright 2010-2020 Google Inc./Google LLC"),
    ("fonts-dejavu-core", "/usr/share/fonts/truetype/dejavu",
     "Bitstream Vera Fonts licence (Copyright 2003 Bitstream, Inc.; Bitstream Vera is a trademark of "
     "Bitstream, Inc.); DejaVu changes are in the public domain"),
]
# not text faces of a writing system: their letters are math or symbol styles
EXCLUDED_FONT = re.compile(r"Math|Symbols|Music|SignWriting|MayanNumerals|IndicSiyaqNumbers")

PARAMS = {
    "render_size": 96,  # px, font size of the large rendering
    "size": 32,  # stored rendering is size × size
    "extent": 26,  # longest side of the ink in the stored rendering, px
    "min_extent": 0.2,  # reject ink whose longest side is below this fraction of the font size
    "notdef_threshold": 0.9,  # reject renderings this similar to the font's .notdef
    "max_faces": 4,
    "face_min_distance": 0.03,  # 1 - similarity below which another face adds nothing
    "dedup_threshold": G.DEDUP_THRESHOLD,
    "dedup_rotations": list(G.DEDUP_ROTATIONS),
    "similarity_blur_sigma": G.BLUR_SIGMA,
    "max_per_alphabet": 30,
    "min_per_alphabet": 14,
    "placeholder_min_codepoints": 1000,  # a font mapping at least this many code points ...
    "placeholder_glyph_ratio": 0.05,  # ... to fewer distinct glyphs than this fraction is a placeholder
    "split_salt": "glyphs-split-v1",
    "test_fraction": 0.25,
    "val_fraction": 0.10,
    "categories": ["Lu", "Ll", "Lt", "Lo"],
}
NAME_KEYWORDS = {"LETTER", "CAPITAL", "SMALL", "SYLLABLE", "SYLLABICS", "IDEOGRAPH", "HIEROGLYPH", "CHARACTER",
                 "SIGN", "VOWEL", "CONSONANT", "IDEOGRAM", "INDEPENDENT", "COMPONENT", "DIGIT", "RADICAL",
                 "LIGATURE", "LOGOGRAM", "FINAL", "INITIAL", "MEDIAL", "ISOLATED", "AFFIX", "SYMBOL"}
ASSET_DIR = Path(G.ASSET).parent


# ---------------------------------------------------------------------------------------------- fonts

def sfnt_tables(data: bytes) -> dict[str, bytes]:
    (n,) = struct.unpack(">H", data[4:6])
    tables = {}
    for i in range(n):
        tag, _, off, length = struct.unpack(">4sIII", data[12 + 16 * i: 28 + 16 * i])
        tables[tag.decode("latin-1")] = data[off: off + length]
    return tables


def read_cmap(table: bytes) -> dict[int, int]:
    """Code point → glyph id from the best Unicode subtable (formats 4 and 12); glyph 0 left out."""
    (n,) = struct.unpack(">H", table[2:4])
    subtables = {}
    for i in range(n):
        pid, eid, off = struct.unpack(">HHI", table[4 + 8 * i: 12 + 8 * i])
        subtables[(pid, eid)] = off
    for key in [(3, 10), (0, 6), (0, 4), (3, 1), (0, 3), (0, 2), (0, 1), (0, 0)]:
        if key in subtables:
            off = subtables[key]
            break
    else:
        raise ValueError(f"no Unicode cmap subtable (have {sorted(subtables)})")
    (fmt,) = struct.unpack(">H", table[off: off + 2])
    out: dict[int, int] = {}
    if fmt == 4:
        (segx2,) = struct.unpack(">H", table[off + 6: off + 8])
        seg = segx2 // 2
        p = off + 14
        ends = struct.unpack(f">{seg}H", table[p: p + segx2])
        p += segx2 + 2
        starts = struct.unpack(f">{seg}H", table[p: p + segx2])
        p += segx2
        deltas = struct.unpack(f">{seg}h", table[p: p + segx2])
        p += segx2
        range_offsets = struct.unpack(f">{seg}H", table[p: p + segx2])
        for i in range(seg):
            for cp in range(starts[i], ends[i] + 1):
                if cp == 0xFFFF:
                    continue
                if range_offsets[i] == 0:
                    gid = (cp + deltas[i]) & 0xFFFF
                else:
                    a = p + 2 * i + range_offsets[i] + 2 * (cp - starts[i])
                    (gid,) = struct.unpack(">H", table[a: a + 2])
                    gid = (gid + deltas[i]) & 0xFFFF if gid else 0
                if gid:
                    out[cp] = gid
    elif fmt == 12:
        (groups,) = struct.unpack(">I", table[off + 12: off + 16])
        for i in range(groups):
            a, b, gid = struct.unpack(">III", table[off + 16 + 12 * i: off + 28 + 12 * i])
            for k, cp in enumerate(range(a, b + 1)):
                if gid + k:
                    out[cp] = gid + k
    else:
        raise ValueError(f"cmap format {fmt} not supported")
    return out


def read_names(table: bytes) -> dict[int, str]:
    """Windows/English (or Mac Roman) strings of the 'name' table by name id."""
    _, count, str_off = struct.unpack(">HHH", table[:6])
    names: dict[int, str] = {}
    for i in range(count):
        pid, eid, lang, nid, length, off = struct.unpack(">HHHHHH", table[6 + 12 * i: 18 + 12 * i])
        raw = table[str_off + off: str_off + off + length]
        if pid == 3 and eid in (0, 1, 10) and lang == 0x409:
            names[nid] = raw.decode("utf-16-be", "replace")
        elif pid == 1 and eid == 0 and nid not in names:
            names[nid] = raw.decode("mac-roman", "replace")
    return names


@dataclass
class Font:
    path: Path
    package: str
    licence: str
    family: str
    style: str
    licence_string: str
    sha256: str
    cmap: dict[int, int]
    rank: tuple = ()
    pil: ImageFont.FreeTypeFont | None = None
    notdef: np.ndarray | None = field(default=None, repr=False)  # features of the .notdef rendering


def package_version(pkg: str) -> str | None:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return r.stdout.strip() or None


def font_rank(path: Path, package_index: int) -> tuple:
    stem = path.stem
    family, _, style = stem.partition("-")
    plain = re.fullmatch(r"(NotoSans|NotoSerif|DejaVuSans|DejaVuSerif)[A-Z]?[a-z]*", family) is not None
    variant = any(w in family for w in ("Display", "Condensed", "Mono", "Looped", "Unjoined", "Slanted", "Rashi",
                                        "Kufi", "Nastaliq", "Traditional")) or not plain
    style_rank = {"Regular": 0, "": 0, "Bold": 1, "Italic": 2, "Oblique": 2, "BoldItalic": 3, "BoldOblique": 3}
    return (package_index, variant, "Serif" in family, style_rank.get(style, 4), stem)


def discover_fonts(log) -> tuple[list[Font], list[dict]]:
    fonts, excluded = [], []
    for pi, (pkg, directory, licence) in enumerate(FONT_SOURCES):
        paths = sorted(Path(directory).glob("*.ttf"))
        if not paths:
            raise SystemExit(f"no fonts in {directory}: apt-get install {pkg}")
        for path in paths:
            data = path.read_bytes()
            tables = sfnt_tables(data)
            names = read_names(tables["name"])
            cmap = read_cmap(tables["cmap"])
            family, style = names.get(1, path.stem), names.get(2, "")
            info = {"file": path.name, "package": pkg}
            distinct = len(set(cmap.values()))
            if "last resort" in family.lower() or "lastresort" in path.stem.lower():
                excluded.append({**info, "reason": "placeholder font (last resort)"})
                continue
            if (len(cmap) >= PARAMS["placeholder_min_codepoints"]
                    and distinct < PARAMS["placeholder_glyph_ratio"] * len(cmap)):
                excluded.append({**info, "reason": f"placeholder font: {len(cmap)} code points on {distinct} glyphs"})
                continue
            if EXCLUDED_FONT.search(path.stem):
                excluded.append({**info, "reason": "not a text face of a writing system"})
                continue
            fonts.append(Font(path, pkg, licence, family, style, names.get(13, ""), hashlib.sha256(data).hexdigest(),
                              cmap, font_rank(path, pi)))
    log(f"{len(fonts)} fonts, {len(excluded)} excluded")
    return fonts, excluded


# ------------------------------------------------------------------------------------------ characters

def script_prefix(name: str) -> str | None:
    words = name.split(" ")
    for i, w in enumerate(words):
        if w.split("-")[0] in NAME_KEYWORDS:
            return " ".join(words[:i]) or None
    return None


# labels of name prefixes that are not the script's usual name
ALPHABET_NAMES = {"CANADIAN": "Canadian_Aboriginal_Syllabics", "EGYPTIAN": "Egyptian_Hieroglyphs",
                  "ANATOLIAN": "Anatolian_Hieroglyphs", "NKO": "NKo", "PHAGS-PA": "Phags_Pa"}


def alphabet_label(prefix: str) -> str:
    return ALPHABET_NAMES.get(prefix) or "_".join(w.capitalize() for w in prefix.split(" "))


def candidate_characters(fonts: list[Font]) -> dict[str, list[int]]:
    """Alphabet → code points (ascending) of letters covered by some font."""
    covered = sorted(set().union(*(f.cmap for f in fonts)))
    letters = []
    for cp in covered:
        ch = chr(cp)
        if unicodedata.category(ch) in PARAMS["categories"] and not unicodedata.decomposition(ch):
            name = unicodedata.name(ch, "")
            if name:
                letters.append((cp, name))
    prefixes = {p for _, name in letters if (p := script_prefix(name))}
    out: dict[str, list[int]] = {}
    for cp, name in letters:
        words = name.split(" ")
        # the shortest known script prefix of the name
        for k in range(1, len(words)):
            prefix = " ".join(words[:k])
            if prefix in prefixes:
                out.setdefault(alphabet_label(prefix), []).append(cp)
                break
    return out


# ------------------------------------------------------------------------------------------- rendering

def render_large(font: ImageFont.FreeTypeFont, ch: str, pad: int = 4) -> np.ndarray | None:
    left, top, right, bottom = font.getbbox(ch, anchor="ls")
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    if right <= left or bottom <= top:
        return None
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).text((pad - left, pad - top), ch, fill=255, font=font, anchor="ls")
    return np.asarray(im)


def normalise(big: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Crop to the ink, centre it in a square, scale the longest side to EXTENT on a SIZE canvas.
    Returns the rendering and the longest side of the ink in the large rendering."""
    ys, xs = np.nonzero(big > 0)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    oy, ox = (side - h) // 2, (side - w) // 2
    square[oy: oy + h, ox: ox + w] = big[y0:y1, x0:x1]
    e, s = PARAMS["extent"], PARAMS["size"]
    small = np.asarray(Image.fromarray(square).resize((e, e), Image.Resampling.BOX))
    out = np.zeros((s, s), np.uint8)
    o = (s - e) // 2
    out[o: o + e, o: o + e] = small
    return out, side


def load_pil(font: Font) -> None:
    font.pil = ImageFont.truetype(str(font.path), PARAMS["render_size"], layout_engine=ImageFont.Layout.BASIC)
    big = render_large(font.pil, chr(0x10FFFD))  # unmapped (private use): draws the .notdef glyph
    norm = normalise(big) if big is not None else None
    font.notdef = G.similarity_features(norm[0][None])[0] if norm else None


REJECTED: Counter[str] = Counter()  # renderings rejected, by reason


def render_character(cp: int, fonts: list[Font]) -> list[tuple[int, np.ndarray]]:
    """Valid normalised renderings ``(font index, image)`` of a character, fonts in rank order."""
    out = []
    for fi, font in enumerate(fonts):
        if cp not in font.cmap:
            continue
        if font.pil is None:
            load_pil(font)
        big = render_large(font.pil, chr(cp))
        norm = normalise(big) if big is not None else None
        if norm is None:
            REJECTED["no ink"] += 1
            continue
        if norm[1] < PARAMS["min_extent"] * PARAMS["render_size"]:
            REJECTED["below the minimum extent"] += 1
            continue
        img = norm[0]
        if font.notdef is not None and float(G.similarity_features(img[None])[0] @ font.notdef) >= \
                PARAMS["notdef_threshold"]:
            REJECTED["like the font's .notdef"] += 1
            continue
        out.append((fi, img))
    return out


def choose_faces(renders: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    """The first (preferred) rendering, then farthest-point sampling up to MAX_FACES."""
    feats = G.similarity_features(np.stack([img for _, img in renders]))
    chosen = [0]
    best = feats @ feats[0]  # similarity of each face to its nearest chosen face
    while len(chosen) < PARAMS["max_faces"]:
        k = int(np.argmin(best))  # first minimum: the best-ranked among equally far faces
        if 1.0 - best[k] < PARAMS["face_min_distance"]:
            break
        chosen.append(k)
        best = np.maximum(best, feats @ feats[k])
    return [renders[k] for k in chosen]


# ------------------------------------------------------------------------------------------------ build

@dataclass
class Char:
    cp: int
    alphabet: str
    faces: list[tuple[int, np.ndarray]]


def select(chars_by_alpha: dict[str, list[Char]], log) -> dict[str, list[Char]]:
    """Greedy near-duplicate removal on the canonical renderings.

    Alphabets are visited by their first code point (scripts encoded early, such as Latin, Greek and
    Cyrillic, first), each in code-point order. A candidate is kept unless it is a near-duplicate of
    a character kept before (in its alphabet or an earlier one) or its alphabet is full. Alphabets
    left with fewer than MIN_PER_ALPHABET characters are dropped and the pass is repeated without
    them, until none is.
    """
    everyone = [c for a in sorted(chars_by_alpha) for c in chars_by_alpha[a]]
    pos = {id(c): k for k, c in enumerate(everyone)}
    pairs = G.near_duplicates(np.stack([c.faces[0][1] for c in everyone]), PARAMS["dedup_threshold"])
    log(f"{len(pairs)} near-duplicate pairs among {len(everyone)} candidates")
    neighbours: dict[int, list[int]] = {}
    for i, j, _ in pairs:
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    alphas = sorted(chars_by_alpha, key=lambda a: (chars_by_alpha[a][0].cp, a))
    while True:
        order = [c for a in alphas for c in chars_by_alpha[a]]
        kept: dict[str, list[Char]] = {a: [] for a in alphas}
        taken: set[int] = set()
        for c in order:
            k = pos[id(c)]
            if len(kept[c.alphabet]) >= PARAMS["max_per_alphabet"] or any(j in taken for j in neighbours.get(k, ())):
                continue
            kept[c.alphabet].append(c)
            taken.add(k)
        small = [a for a in alphas if len(kept[a]) < PARAMS["min_per_alphabet"]]
        if not small:
            break
        log(f"alphabets with fewer than {PARAMS['min_per_alphabet']} distinct characters, dropped: "
            f"{', '.join(f'{a} ({len(kept[a])})' for a in small)}")
        alphas = [a for a in alphas if a not in small]
    log(f"kept {len(taken)} characters in {len(alphas)} alphabets")
    return {a: sorted(kept[a], key=lambda c: c.cp) for a in sorted(alphas)}


def split_alphabets(counts: dict[str, int]) -> dict[str, str]:
    order = sorted(counts, key=lambda a: hashlib.sha256((PARAMS["split_salt"] + a).encode()).hexdigest())
    total = sum(counts.values())
    out, acc = {}, {"test": 0, "val": 0}
    for a in order:
        if acc["test"] < PARAMS["test_fraction"] * total:
            out[a] = "test"
        elif acc["val"] < PARAMS["val_fraction"] * total:
            out[a] = "val"
        else:
            out[a] = "train"
        if out[a] in acc:
            acc[out[a]] += counts[a]
    return out


def write_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz with fixed member timestamps and order (np.savez stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, arr in arrays.items():
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}:".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def build(log) -> tuple[bytes, dict]:
    t0 = time.time()
    fonts, excluded = discover_fonts(log)
    fonts.sort(key=lambda f: f.rank)
    candidates = candidate_characters(fonts)
    log(f"{sum(map(len, candidates.values()))} candidate letters in {len(candidates)} alphabets")

    chars_by_alpha: dict[str, list[Char]] = {}
    rejected = 0
    for alpha in sorted(candidates):
        chars = []
        # enough candidates to fill the alphabet after rejections and near-duplicates
        for cp in candidates[alpha]:
            if len(chars) >= 4 * PARAMS["max_per_alphabet"]:
                break
            renders = render_character(cp, fonts)
            if not renders:
                rejected += 1
                continue
            chars.append(Char(cp, alpha, choose_faces(renders)))
        if chars:
            chars_by_alpha[alpha] = chars
    log(f"rendered {sum(map(len, chars_by_alpha.values()))} characters ({rejected} without a valid rendering) "
        f"in {time.time() - t0:.0f} s; renderings rejected: {dict(REJECTED)}")

    kept = select(chars_by_alpha, log)
    alphabets = sorted(kept)
    split = split_alphabets({a: len(kept[a]) for a in alphabets})
    chars = [c for a in alphabets for c in kept[a]]
    used_fonts = sorted({fi for c in chars for fi, _ in c.faces})
    font_index = {fi: k for k, fi in enumerate(used_fonts)}
    arrays = {
        "images": np.stack([img for c in chars for _, img in c.faces]).astype(np.uint8),
        "offsets": np.concatenate([[0], np.cumsum([len(c.faces) for c in chars])]).astype(np.int32),
        "codepoints": np.array([c.cp for c in chars], np.int32),
        "alphabet": np.array([alphabets.index(c.alphabet) for c in chars], np.int16),
        "face_font": np.array([font_index[fi] for c in chars for fi, _ in c.faces], np.int16),
        "alphabets": np.array(alphabets),
        "alphabet_split": np.array([G.SPLITS.index(split[a]) for a in alphabets], np.int8),
    }
    blob = write_npz(arrays)

    per_split = {s: {"alphabets": sum(split[a] == s for a in alphabets),
                     "characters": sum(len(kept[a]) for a in alphabets if split[a] == s)} for s in G.SPLITS}
    versions = {pkg: package_version(pkg) for pkg, _, _ in FONT_SOURCES}
    manifest = {
        "name": "glyphs",
        "asset": "glyphs.npz",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "content_sha256": content_hash(arrays),
        "bytes": len(blob),
        "image_polarity": "white ink (255) on black (0)",
        "counts": {"alphabets": len(alphabets), "characters": len(chars), "renderings": int(len(arrays["images"])),
                   "splits": per_split},
        "build": {
            "tool": "tools/build_glyphs.py",
            "command": ".venv/bin/python tools/build_glyphs.py",
            "parameters": PARAMS,
            "near_duplicates": "canonical (first) renderings; ink = pixel >= 128; overlap = min of the fractions of "
                               "each glyph's ink within one pixel (8-neighbourhood) of the other's, maximised over "
                               "turning one by -8/0/+8 degrees; pairs with overlap >= dedup_threshold are never both "
                               "kept (innerloop.data.images.glyphs.near_duplicates)",
            "similarity": "Pearson correlation of Gaussian-blurred renderings (face choice, .notdef check; "
                          "innerloop.data.images.glyphs.similarity_features)",
            "unicode_data": unicodedata.unidata_version,
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "freetype": features.version("freetype2"),
            "numpy": np.__version__,
            "font_packages": versions,
        },
        "licences": {
            "fonts-noto-core": "SIL Open Font License 1.1 (https://openfontlicense.org); the fonts are (c) Google; "
                               "Debian copyright file /usr/share/doc/fonts-noto-core/copyright",
            "fonts-dejavu-core": "Bitstream Vera Fonts licence, DejaVu changes in the public domain; Debian copyright "
                                 "file /usr/share/doc/fonts-dejavu-core/copyright",
            "note": "the asset holds rendered bitmaps of glyphs, not the font software",
        },
        "fonts": [{"index": font_index[fi], "file": fonts[fi].path.name, "package": fonts[fi].package,
                   "family": fonts[fi].family, "style": fonts[fi].style, "licence": fonts[fi].licence,
                   "licence_in_font": fonts[fi].licence_string, "sha256": fonts[fi].sha256} for fi in used_fonts],
        "excluded_fonts": excluded,
        "alphabets": [{"name": a, "split": split[a], "characters": [
            [f"U+{c.cp:04X}", unicodedata.name(chr(c.cp)), [font_index[fi] for fi, _ in c.faces]] for c in kept[a]]}
            for a in alphabets],
        "alphabets_format": "characters are [code point, Unicode name, indices into fonts of the stored faces]",
    }
    log(f"{len(alphabets)} alphabets, {len(chars)} characters, {len(arrays['images'])} renderings, "
        f"{len(blob) / 1e6:.2f} MB; splits {per_split}; {time.time() - t0:.0f} s")
    return blob, manifest


def dump_manifest(manifest: dict) -> str:
    """Indented JSON with one line per character."""
    head = {k: v for k, v in manifest.items() if k != "alphabets"}
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2] + ',\n "alphabets": [\n'
    blocks = []
    for a in manifest["alphabets"]:
        chars = ",\n".join("   " + json.dumps(c, ensure_ascii=False) for c in a["characters"])
        blocks.append(f'  {{"name": {json.dumps(a["name"])}, "split": {json.dumps(a["split"])}, "characters": [\n'
                      f"{chars}\n  ]}}")
    return text + ",\n".join(blocks) + "\n ]\n}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ASSET_DIR, help="directory for glyphs.npz and glyphs_manifest.json")
    ap.add_argument("--check", action="store_true",
                    help="rebuild and compare with the manifest in --out; write nothing")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    blob, manifest = build(log)
    if args.check:
        old = json.loads((args.out / "glyphs_manifest.json").read_text())
        same = old["sha256"] == manifest["sha256"]
        same_content = old["content_sha256"] == manifest["content_sha256"]
        print(f"asset sha256 {'matches' if same else 'DIFFERS'}: {manifest['sha256']}")
        print(f"content sha256 {'matches' if same_content else 'DIFFERS'}: {manifest['content_sha256']}")
        return 0 if same_content else 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "glyphs.npz").write_bytes(blob)
    (args.out / "glyphs_manifest.json").write_text(dump_manifest(manifest), encoding="utf-8")
    print(f"wrote {args.out / 'glyphs.npz'} ({len(blob)} bytes, sha256 {manifest['sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
