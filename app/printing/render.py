"""HTML to PDF with WeasyPrint, locked down (STYLE habit 8; PITFALLS "Web").

Print templates are Jinja `.html` files, so everything they show is autoescaped: a patient
called `<img src="http://...">` is printed as those characters, never parsed as a tag.
Behind that, the URL fetcher is the second wall: WeasyPrint may load only files from our
own `static/` folder. Every other URL (http, https elsewhere, file, ftp, data, ...) is
refused, so nothing in a document can make the renderer reach the network (SSRF, e.g.
CVE-2025-68616's redirects) or read a file of the server.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from urllib.parse import unquote, urlsplit

from flask import current_app, render_template
from weasyprint import HTML
from weasyprint.urls import URLFetcher, URLFetcherResponse

logger = logging.getLogger(__name__)

# The origin documents are rendered under. `.invalid` can never resolve (RFC 2606), so
# even a fetch that escaped our fetcher would go nowhere; ours never opens a socket.
STATIC_ORIGIN = "https://iep-desk.invalid"


class RefusedURL(ValueError):
    """The renderer asked for something that is not one of our static files."""


class StaticOnlyFetcher(URLFetcher):
    """Serves `<origin>/static/<path>` from the app's static folder, refuses the rest.

    `data:` URLs are refused too: our templates never need one (the QR code is inline
    SVG, styles and images are static files), and allowing them would hand WeasyPrint's
    image and SVG parsers bytes that did not come from our repository.
    """

    def __init__(self, static_folder: str | Path, static_url_path: str = "/static") -> None:
        # No protocol allowed and no redirects: if WeasyPrint ever reached the inherited
        # urllib opener instead of `fetch` below, it would still refuse every URL.
        super().__init__(timeout=1, allowed_protocols=(), allow_redirects=False)
        self.static_folder = Path(static_folder).resolve()
        self.prefix = static_url_path.rstrip("/") + "/"

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> URLFetcherResponse:
        """Read one static file; raise `RefusedURL` for anything else (WeasyPrint skips it)."""
        try:
            path = self.resolve(url)
        except RefusedURL:
            # %r keeps a newline in a URL from forging a log line.
            logger.warning("PDF renderer refused to fetch %r", url[:200])
            raise
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return URLFetcherResponse(url, path.read_bytes(), {"Content-Type": mime})

    def resolve(self, url: str) -> Path:
        """The file under static/ that `url` names, or `RefusedURL`."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise RefusedURL("malformed URL") from exc
        if f"{parts.scheme}://{parts.netloc}".lower() != STATIC_ORIGIN or parts.query:
            raise RefusedURL("only the desk's own static files may be loaded")
        if not parts.path.startswith(self.prefix):
            raise RefusedURL("not under static/")
        relative = unquote(parts.path[len(self.prefix) :])
        if "\x00" in relative or "\\" in relative:
            raise RefusedURL("bad characters in path")
        # resolve() folds `..` (also percent-encoded ones, unquoted above) and symlinks,
        # so the containment check sees the file that would really be opened.
        candidate = (self.static_folder / relative).resolve()
        if not candidate.is_relative_to(self.static_folder) or not candidate.is_file():
            raise RefusedURL("no such static file")
        return candidate


def static_fetcher() -> StaticOnlyFetcher:
    """A fetcher bound to the current app's static folder."""
    app = current_app
    return StaticOnlyFetcher(app.static_folder or Path(app.root_path) / "static", app.static_url_path or "/static")


def render_pdf(template_name: str, **context: object) -> bytes:
    """Render a print template (plain values only, no ORM objects) to PDF bytes.

    Raises ValueError for a template that Jinja would not autoescape.
    """
    if not template_name.endswith(".html"):
        raise ValueError("print templates end in .html, so that Jinja autoescapes them")
    html = render_template(template_name, **context)
    fetcher = static_fetcher()
    # Relative URLs ("css/pdf.css") and root ones ("/static/css/pdf.css") both land in static/.
    document = HTML(string=html, base_url=STATIC_ORIGIN + fetcher.prefix, url_fetcher=fetcher)
    return document.write_pdf()
