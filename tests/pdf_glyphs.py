"""What a PDF really shows: the glyphs drawn, not the text it claims (issue 13.11).

A text extractor reads a PDF's ToUnicode map, and WeasyPrint writes the name typed there
even when no font had its letters: `pdftotext` then prints "山田" while the page shows two
empty boxes. So `missing_glyphs` reads the content streams themselves (pypdf), follows
each shown code through the font's encoding to a glyph of the embedded font program
(fontTools, WeasyPrint's own dependency), and reports every glyph that is .notdef (glyph
0) or has no outline although its text is not white space.

Poppler's tools (`pdftotext`, `pdftoppm`, `pdffonts`, Debian package `poppler-utils`)
give the text a person would copy, the fonts embedded, word boxes and pictures. A missing
tool or font FAILS the test, never skips it: scripts/setup installs them.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from fontTools.pens.boundsPen import ControlBoundsPen
from fontTools.ttLib import TTFont
from pypdf import PdfReader
from pypdf.generic import ContentStream, DictionaryObject

# The font families pdf.css names for the scripts patients' names come in, with the
# Debian package each comes from.
REQUIRED_FONTS = {"Noto Sans": "fonts-noto-core", "Noto Sans CJK JP": "fonts-noto-cjk",
                  "DejaVu Sans": "fonts-dejavu-core"}


def poppler(tool: str) -> str:
    """The path of one of Poppler's tools, or fail naming the package."""
    found = shutil.which(tool)
    if not found:
        pytest.fail(f"{tool} is missing: install the Debian package `poppler-utils` (scripts/setup does); "
                    "the PDF tests never skip")
    return found


def require_fonts() -> None:
    """Fail unless fontconfig knows every family pdf.css relies on."""
    fc_list = shutil.which("fc-list")
    if not fc_list:
        pytest.fail("fc-list is missing: install the Debian package `fontconfig` (scripts/setup installs WeasyPrint's)")
    families = subprocess.run([fc_list, ":", "family"], capture_output=True, text=True, check=True).stdout  # noqa: S603 - fixed argv
    known = {name.strip() for line in families.splitlines() for name in line.split(",")}
    missing = [f"{family} ({package})" for family, package in REQUIRED_FONTS.items() if family not in known]
    if missing:
        pytest.fail("fonts missing: " + ", ".join(missing) + " — scripts/setup installs them; the PDF tests never skip")


def _run(args: list[str], pdf: bytes) -> str:
    return subprocess.run(args, input=pdf, capture_output=True, check=True).stdout.decode()  # noqa: S603 - fixed argv


def pdftotext(pdf: bytes) -> str:
    """The text a person would copy out of the PDF."""
    return _run([poppler("pdftotext"), "-enc", "UTF-8", "-", "-"], pdf)


@dataclass(frozen=True)
class Word:
    page: int
    text: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True)
class PageBox:
    width: float
    height: float


def words(pdf: bytes) -> tuple[list[PageBox], list[Word]]:
    """Every word Poppler finds, with its box in points, and each page's size."""
    out = _run([poppler("pdftotext"), "-enc", "UTF-8", "-bbox", "-", "-"], pdf)
    pages: list[PageBox] = []
    found: list[Word] = []
    for match in re.finditer(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', out, re.S):
        pages.append(PageBox(float(match[1]), float(match[2])))
        for w in re.finditer(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>',
                             match[3]):
            found.append(Word(len(pages), html.unescape(w[5]), *(float(w[i]) for i in range(1, 5))))
    return pages, found


@dataclass(frozen=True)
class EmbeddedFont:
    name: str
    kind: str
    encoding: str
    embedded: bool


def pdffonts(pdf: bytes) -> list[EmbeddedFont]:
    """The fonts `pdffonts` lists (name without the subset tag)."""
    lines = _run([poppler("pdffonts"), "-"], pdf).splitlines()[2:]
    fonts = []
    for line in lines:
        # name, type (may hold spaces), encoding, emb, sub, uni, object, generation
        match = re.match(r"(\S+)\s+(.+?)\s+(\S+)\s+(yes|no)\s+(yes|no)\s+(yes|no)\s+\d+\s+\d+$", line)
        assert match, line
        fonts.append(EmbeddedFont(match[1].split("+")[-1], match[2], match[3], match[4] == "yes"))
    return fonts


def write_png(pdf: bytes, path: Path, *, resolution: int = 110) -> Path:
    """The PDF's first page as a PNG at `path`, for a person to look at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    subprocess.run([poppler("pdftoppm"), "-png", "-singlefile", "-f", "1", "-l", "1", "-r", str(resolution),  # noqa: S603 - fixed argv
                    "-", str(stem)], input=pdf, check=True)
    return path


def ink_in_side_margins(pdf: bytes, margin_mm: float, *, tolerance_mm: float = 0.5) -> list[tuple[int, str]]:
    """(page, "left"/"right") for every page with anything drawn in its side margins, i.e.
    something (a table, a word) that ran past the printable width. The page's own footers
    sit in the bottom margin, within the printable width, so they never count."""
    dpi = 72
    # PDF on stdin, pictures on stdout (a second "-" would name files "--<page>.pgm").
    out = subprocess.run([poppler("pdftoppm"), "-gray", "-r", str(dpi), "-"],  # noqa: S603 - fixed argv
                         input=pdf, capture_output=True, check=True).stdout
    found = []
    page = 0
    while out:
        # One binary PGM (P5) per page: "P5 <width> <height> <max>" then a byte a pixel.
        match = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", out)
        assert match, out[:40]
        width, height = int(match[1]), int(match[2])
        pixels = out[match.end() : match.end() + width * height]
        out = out[match.end() + width * height :]
        page += 1
        edge = round((margin_mm - tolerance_mm) / 25.4 * dpi)
        for side, columns in (("left", range(edge)), ("right", range(width - edge, width))):
            if any(pixels[row * width + col] < 200 for row in range(height) for col in columns):
                found.append((page, side))
    return found


# --- the glyphs drawn --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Glyph:
    page: int
    font: str
    glyph_id: int
    text: str  # what the PDF's ToUnicode map says the glyph stands for


def _cmap_pairs(data: str) -> dict[int, str]:
    """A CMap's single mappings and ranges (`bfchar`/`cidchar`, `bfrange`/`cidrange`), code -> target."""
    pairs: dict[int, str] = {}
    for block in re.findall(r"begin(?:bf|cid)char(.*?)end(?:bf|cid)char", data, re.S):
        for code, target in re.findall(r"<([0-9a-fA-F]+)>\s*(<[0-9a-fA-F]*>|\d+)", block):
            pairs[int(code, 16)] = target
    for block in re.findall(r"begin(?:bf|cid)range(.*?)end(?:bf|cid)range", data, re.S):
        for low, high, start in re.findall(r"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>\s*(<[0-9a-fA-F]*>|\d+)", block):
            for offset, code in enumerate(range(int(low, 16), int(high, 16) + 1)):
                if start.startswith("<"):
                    first = int(start[1:-1], 16) + offset
                    pairs[code] = f"<{first:04x}>"
                else:
                    pairs[code] = str(int(start) + offset)
    return pairs


def _unicode(target: str) -> str:
    raw = bytes.fromhex(target.strip("<>"))
    return raw.decode("utf-16-be", errors="replace")


class _Font:
    """A Type 0 font as WeasyPrint writes it: two-byte codes, an Identity-H or an explicit
    CID encoding, CIDToGIDMap /Identity, and the font program embedded."""

    def __init__(self, font: DictionaryObject) -> None:
        self.name = str(font.get("/BaseFont", "?")).lstrip("/")
        if font.get("/Subtype") != "/Type0":
            raise AssertionError(f"{self.name}: a {font.get('/Subtype')} font; WeasyPrint writes Type0 fonts only")
        encoding = font["/Encoding"]
        self.code_to_cid: dict[int, int] | None = None  # None: Identity-H
        if encoding != "/Identity-H":
            self.code_to_cid = {code: int(cid) for code, cid in
                                _cmap_pairs(encoding.get_object().get_data().decode("latin-1")).items()}
        self.to_unicode: dict[int, str] = {}
        if "/ToUnicode" in font:
            self.to_unicode = {code: _unicode(target) for code, target in
                               _cmap_pairs(font["/ToUnicode"].get_object().get_data().decode("latin-1")).items()}
        descendant = font["/DescendantFonts"][0].get_object()
        cid_to_gid = descendant.get("/CIDToGIDMap", "/Identity")
        if cid_to_gid != "/Identity":
            raise AssertionError(f"{self.name}: CIDToGIDMap is a stream; WeasyPrint writes /Identity")
        descriptor = descendant["/FontDescriptor"].get_object()
        program = next((descriptor[key] for key in ("/FontFile2", "/FontFile3", "/FontFile") if key in descriptor),
                       None)
        if program is None:
            raise AssertionError(f"{self.name}: the font is not embedded")
        self.font = TTFont(BytesIO(program.get_object().get_data()))
        self.glyph_order = self.font.getGlyphOrder()
        self.glyph_set = self.font.getGlyphSet()
        self._inked: dict[int, bool] = {}

    def glyph_id(self, code: int) -> int:
        if self.code_to_cid is None:
            return code
        return self.code_to_cid.get(code, 0)  # a code the CMap does not map shows .notdef

    def inked(self, glyph_id: int) -> bool:
        """Whether the embedded program draws anything for this glyph."""
        if glyph_id not in self._inked:
            if glyph_id >= len(self.glyph_order):
                self._inked[glyph_id] = False
            else:
                pen = ControlBoundsPen(self.glyph_set)
                self.glyph_set[self.glyph_order[glyph_id]].draw(pen)
                self._inked[glyph_id] = pen.bounds is not None
        return self._inked[glyph_id]


def _strings(operands: list[object], operator: bytes) -> list[bytes]:
    if operator == b"TJ":
        items = operands[0]
    elif operator in (b"Tj", b"'"):
        items = operands[:1]
    elif operator == b'"':
        items = operands[2:3]
    else:
        return []
    out = []
    for item in items:
        if isinstance(item, (int, float)):
            continue
        raw = getattr(item, "original_bytes", None)
        out.append(raw if raw is not None else bytes(item))
    return out


def _walk(reader: PdfReader, content: object, resources: DictionaryObject, page: int,
          fonts: dict[int, _Font], shown: list[Glyph]) -> None:
    font_resources = resources.get("/Font", DictionaryObject()).get_object()
    current: _Font | None = None
    for operands, operator in ContentStream(content, reader).operations:
        if operator == b"Tf":
            reference = font_resources[operands[0]]
            key = reference.idnum if hasattr(reference, "idnum") else id(reference)
            if key not in fonts:
                fonts[key] = _Font(reference.get_object())
            current = fonts[key]
        elif operator == b"Do":
            xobject = resources["/XObject"][operands[0]].get_object()
            if xobject.get("/Subtype") == "/Form":
                _walk(reader, xobject, xobject.get("/Resources", resources).get_object(), page, fonts, shown)
        for raw in _strings(operands, operator):
            if current is None:
                raise AssertionError("text shown before a font was set")
            for i in range(0, len(raw) - 1, 2):
                code = int.from_bytes(raw[i : i + 2], "big")
                shown.append(Glyph(page, current.name, current.glyph_id(code), current.to_unicode.get(code, "")))


def shown_glyphs(pdf: bytes) -> tuple[list[Glyph], dict[int, _Font]]:
    """Every glyph the PDF's pages draw, in order, and the fonts they come from."""
    reader = PdfReader(BytesIO(pdf))
    fonts: dict[int, _Font] = {}
    shown: list[Glyph] = []
    for number, page in enumerate(reader.pages, start=1):
        resources = page.get("/Resources", DictionaryObject()).get_object()
        contents = page.get_contents()
        if contents is not None:
            _walk(reader, contents, resources, number, fonts, shown)
    return shown, fonts


def missing_glyphs(pdf: bytes) -> list[Glyph]:
    """The glyphs drawn as .notdef (an empty box) or with no outline although their text
    is not white space: what a reader sees as boxes or gaps instead of letters."""
    shown, fonts = shown_glyphs(pdf)
    by_name = {font.name: font for font in fonts.values()}
    return [glyph for glyph in shown
            if glyph.glyph_id == 0 or (glyph.text.strip() and not by_name[glyph.font].inked(glyph.glyph_id))]
