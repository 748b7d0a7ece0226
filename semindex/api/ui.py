"""The search page at ``/``: three static files shipped in the package, no build step, no CDN.

Why it is shaped this way:

* The page and its two assets are public (a browser cannot send a bearer key when it
  navigates); they hold no data. Every data call the page makes goes to the JSON API
  with the key the user typed, so auth on the API is exactly as strict as before:
  :data:`PUBLIC_PATHS` is a set of three exact paths, no prefixes.
* A strict Content-Security-Policy (scripts and styles from this origin only, no
  inline code, no frames, no form posts, fetches to this origin only) means that even
  a rendering bug could not run a document's ``<script>``; the page itself never
  puts data into ``innerHTML`` in the first place.
* Caching: the HTML is ``no-cache`` (revalidated with its ETag on every load) and
  names its assets with a content hash (``/ui/app.js?v=HASH``); an asset requested
  with its current hash is cached for a year as immutable, any other request
  revalidates. A new release therefore shows up on the next reload, never stale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PUBLIC_PATHS = frozenset({"/", *(f"/ui/{name}" for name in ASSETS)})

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class _File:
    body: bytes
    etag: str
    version: str


def _file(body: bytes) -> _File:
    digest = hashlib.sha256(body).hexdigest()
    return _File(body, f'"{digest[:32]}"', digest[:16])


@cache
def _asset(name: str) -> _File:
    return _file((STATIC_DIR / name).read_bytes())


@lru_cache(maxsize=1)
def _page() -> _File:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for name in ASSETS:
        html = html.replace(f"/ui/{name}", f"/ui/{name}?v={_asset(name).version}")
    return _file(html.encode("utf-8"))


def _answer(request: Request, f: _File, media_type: str, cache: str) -> Response:
    headers = {**_SECURITY_HEADERS, "cache-control": cache, "etag": f.etag}
    if f.etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(f.body, media_type=media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    return _answer(request, _page(), "text/html; charset=utf-8", REVALIDATE)


@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
async def asset(request: Request, name: str) -> Response:
    if name not in ASSETS:
        return Response(b'{"error":"not_found","detail":"no such file"}', status_code=404,
                        media_type="application/json")
    f = _asset(name)
    cache = IMMUTABLE if request.query_params.get("v") == f.version else REVALIDATE
    return _answer(request, f, ASSETS[name], cache)
