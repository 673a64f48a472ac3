"""The HMA-compatible matcher API: Meta's Hasher-Matcher-Actioner (OpenMediaMatch) endpoints,
with HMA's request and response shapes, answered from modstream's banks.

Shapes come from HMA's source (facebook/ThreatExchange, hasher-matcher-actioner/src/
OpenMediaMatch: blueprints/matching.py, hashing.py, curation.py and schemas/*.py) and from
the way Coop's HMA client (roostorg/coop, server/services/hmaService/index.ts) calls them:

- `GET /m/lookup?signal=HASH&signal_type=pdq[&banks=A,B]`:
  `{BANK: [{"bank_content_id": int, "distance": str}]}`.
  `GET /m/lookup?url=URL[&content_type=photo|video][&types=..]`, and `POST /m/lookup` with
  a multipart file (its field named by the content type, `photo` or `video`):
  `{signal_type: {BANK: [...]}}`; with `signal_type` given as well, only that type's object.
- `GET /m/raw_lookup?signal=&signal_type=[&include_distance=true][&banks=]`:
  `{"matches": [bank_content_id, ...]}`, or with include_distance
  `{"matches": [{"bank_content_id": int, "distance": str}]}`. `POST /m/raw_lookup` takes the
  same parameters as a JSON object (a modstream addition; HMA has only GET).
- `GET /h/hash?url=URL[&content_type=][&types=]` and `POST /h/hash` (one multipart file,
  field `photo` or `video`): `{signal_type: hash}`.
- `GET /c/banks`: `[{"name": str, "matching_enabled_ratio": float}]`;
  `GET /c/bank/NAME`: `{"name", "matching_enabled_ratio"}`, or 404.
- `POST /c/bank/NAME/content` (a multipart file, or `?url=`; optional `metadata` JSON and
  `note`) and `POST /c/bank/NAME/signal` (JSON `{signal_type: hash, ..., "note"?}`):
  `{"id": int, "signals": {signal_type: hash}}`.
- Errors: `{"message": str}` (HMA's ErrorResponse), here with the same text as `reason`.

How they map onto modstream:
- Signal types: `pdq`; `video_md5` and `video_sha256` (HMA's exact hashes of a video file)
  are modstream's `md5` and `sha256`, which modstream computes for every file, and those
  names are accepted too. A photo hashes to `pdq` by default, a video to `video_md5`; `types`
  selects among a content type's names (photo: pdq, md5, sha256; video: video_md5,
  video_sha256, md5, sha256). HMA's vPDQ is not offered: modstream's per-frame video PDQ
  has no single-string form, and /v1/check matches it.
- Banks exist in modstream once they hold an entry, and have no enabled ratio: every bank
  reads `matching_enabled_ratio: 1.0`, `seed` and `bypass_coinflip` are accepted and change
  nothing, and a write to a bank that does not exist yet creates it (HMA answers 404 there;
  `POST /c/banks`, bank updates and deletes are not offered: they need bank records modstream
  does not keep).
- modstream keeps no content records: a `bank_content_id` names one banked hash (an integer
  of 53 bits derived from bank/signal_type/hash, so that JavaScript clients read it exactly).
  Adding content banks all its hashes (md5, sha256, PDQ, per-frame video PDQ) and answers the
  id of its primary hash (PDQ for a photo, MD5 otherwise), the one a lookup of it returns.
- Distances: PDQ matches give the Hamming distance, exact matches `-`, as HMA's indexes
  print them. Matching applies modstream's thresholds (MODSTREAM_PDQ_THRESHOLD and the
  per-bank ones), so a lookup agrees with the pipeline.
- Writes carry `category` and `severity` (query parameters, form fields or JSON keys;
  default MODSTREAM_API_BANK_CATEGORY / _BANK_SEVERITY), since modstream's policy reads them;
  the entry's source is `api:` and the token's name; `metadata` and `note` go to the audit
  line, as bank entries have no field for them.
- Fetching by `url` follows the enrich stage's rules (MODSTREAM_MEDIA_ALLOWED_HOSTS,
  MODSTREAM_MEDIA_ROOT); without `content_type`, the content type is read from the media
  (an image is a photo, anything else a video), not from the HTTP headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.api.auth import Principal
from pipeline.api.errors import ApiError
from pipeline.api.http import is_json, is_multipart, read_form, read_json, scoped
from pipeline.api.publish import audit
from pipeline.banks.admin import HASH_FORMATS, BankInputError, bank_entry
from pipeline.records import Record, record_key, signal
from pipeline.signals.exact import exact_signals
from pipeline.signals.media import MediaError, media_signals

T = TypeVar("T")

# HMA signal type name -> modstream signal type
SIGNAL_TYPES = {"pdq": "pdq", "video_md5": "md5", "video_sha256": "sha256", "md5": "md5", "sha256": "sha256"}
EXACT = frozenset({"md5", "sha256"})
CONTENT_TYPES = {  # content type -> (the names hashed by default, every name it offers)
    "photo": (("pdq",), ("pdq", "md5", "sha256")),
    "video": (("video_md5",), ("video_md5", "video_sha256", "md5", "sha256")),
}
BANKED = frozenset({"md5", "sha256", "pdq", "video_pdq"})
NOTE_MAX = 255
BANK_NAME_MAX = 200


def content_id(bank: str, signal_type: str, value: str) -> int:
    """The bank_content_id of one banked hash: 53 bits, exact as a JavaScript number."""
    key = record_key("banks", {"bank": bank, "signal_type": signal_type, "hash": value})
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 11


def _services(request: Request) -> Any:
    return request.app.state.services


async def _in_pool(request: Request, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_services(request).cpu, fn, *args)


def _flag(value: str | bool | None, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise ApiError(400, f"{name}: invalid boolean parameter - prefer true/false")


def _bank_filter(raw: str | None) -> set[str] | None:
    return {b.strip() for b in raw.split(",") if b.strip()} if raw else None


# ---- matching ---------------------------------------------------------------------------
def signal_of(signal_type: str | None, value: str | None) -> Record:
    if not signal_type:
        raise ApiError(400, "signal_type is required")
    if value is None:
        raise ApiError(400, "signal is required")
    kind = SIGNAL_TYPES.get(signal_type)
    if kind is None:
        raise ApiError(400, f"No such SignalType '{signal_type}'")
    value = value.strip().lower()
    if not HASH_FORMATS[kind].fullmatch(value):
        raise ApiError(400, f"invalid signal: {value!r} is not a valid {signal_type} hash")
    return signal(kind, value, 100)


def lookup_many(banks: Any, signals: list[Record], only: set[str] | None) -> list[dict[str, list[dict[str, Any]]]]:
    """HMA's lookup result of each signal: bank -> [{bank_content_id, distance}], nearest first."""
    out = []
    for matches in banks.match_batch([[s] for s in signals]):
        by_bank: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in sorted(matches, key=lambda m: (m["bank"], m["distance"], m["hash"])):
            if only is None or m["bank"] in only:
                by_bank[m["bank"]].append(
                    {
                        "bank_content_id": content_id(m["bank"], m["signal_type"], m["hash"]),
                        "distance": "-" if m["signal_type"] in EXACT else str(m["distance"]),
                    }
                )
        out.append(dict(by_bank))
    return out


async def _hash_request(request: Request, params: dict[str, str | None]) -> dict[str, str]:
    """The hashes of the media of a request: a multipart file, or the `url` parameter."""
    if is_multipart(request):
        form = await read_form(request, max_files=1)
        if not form.files:
            raise ApiError(400, "Missing multipart/form-data file upload")
        field_name, data, _ = form.files[0]
        return await _in_pool(request, hash_media, request, data, field_name, params.get("types"))
    url = params.get("url")
    if not url:
        raise ApiError(400, "url is required (or upload a multipart file)")
    data = await _fetch(request, url)
    return await _in_pool(request, hash_media, request, data, params.get("content_type"), params.get("types"))


async def _fetch(request: Request, url: str) -> bytes:
    fetcher = _services(request).fetcher
    if fetcher is None:
        raise ApiError(400, "fetching media by url is not configured on this server")
    loop = asyncio.get_running_loop()
    try:
        data: bytes = await loop.run_in_executor(_services(request).io, fetcher.fetch, url)
    except MediaError as exc:
        raise ApiError(400, f"Failed to fetch URL: {exc}") from None
    return data


def _signals(request: Request, data: bytes, content_type: str | None, names: Iterable[str] = ()) -> list[Record]:
    """The signals of media of `content_type` (None: unknown yet). Exact hashes alone are
    enough for a video whose frames cannot be decoded (HMA's video_md5 reads only the bytes),
    and are all that is computed when no perceptual name is asked for."""
    if content_type == "video" and names and "pdq" not in names:
        return exact_signals(data)
    try:
        return media_signals(data, _services(request).limits)
    except MediaError as exc:
        if content_type == "video" and data:
            return list(getattr(exc, "signals", []))
        raise ApiError(400, f"cannot hash the media: {exc}") from None


def hash_media(request: Request, data: bytes, content_type: str | None, types: str | None) -> dict[str, str]:
    """{HMA signal type name: hash} of `data` (blocking: runs in the pool)."""
    if content_type is not None and content_type not in CONTENT_TYPES:
        raise ApiError(400, f"no such content_type: '{content_type}'")
    names: tuple[str, ...] | None = None
    if types is not None:
        names = tuple(dict.fromkeys(t.strip() for t in types.split(",") if t.strip()))
        if not names:
            raise ApiError(400, "empty signal type selection")
    wanted = names if names is not None else CONTENT_TYPES[content_type][0] if content_type else ()
    signals = _signals(request, data, content_type, wanted)
    if content_type is None:
        content_type = "photo" if any(s["signal_type"] == "pdq" for s in signals) else "video"
    default, offered = CONTENT_TYPES[content_type]
    for name in names or ():
        if name not in offered:
            raise ApiError(400, f"signal type '{name}' doesn't exist or is disabled")
    values = {s["signal_type"]: s["value"] for s in signals if s["signal_type"] in ("pdq", "md5", "sha256")}
    if content_type == "photo" and "pdq" not in values:
        raise ApiError(400, "the media is not a photo that can be hashed (no PDQ hash)")
    return {name: values[SIGNAL_TYPES[name]] for name in names or default}


@scoped("check")
async def lookup_get(request: Request, principal: Principal) -> Response:
    """Look up a hash, or the media at a URL, in every bank (HMA's GET /m/lookup).
    ---
    tags: [HMA matching]
    parameters:
      - {name: signal, in: query, schema: {type: string}, description: the hash}
      - {name: signal_type, in: query, schema: {type: string, enum: [pdq, video_md5, video_sha256, md5, sha256]}}
      - {name: url, in: query, schema: {type: string}, description: media to fetch and hash instead}
      - {name: content_type, in: query, schema: {type: string, enum: [photo, video]}}
      - {name: types, in: query, schema: {type: string}, description: comma-separated signal types to hash}
      - {name: banks, in: query, schema: {type: string}, description: comma-separated banks to search}
    responses:
      200:
        description: "{bank: [{bank_content_id, distance}]}, or {signal_type: {bank: [...]}} for a url"
        content: {application/json: {schema: {$ref: '#/components/schemas/HmaLookup'}}}
      400: {$ref: '#/components/responses/Error'}
    """
    q = request.query_params
    only = _bank_filter(q.get("banks"))
    if q.get("url"):
        hashes = await _hash_request(request, dict(q))
        names = list(hashes)
        per_type = await _in_pool(
            request, lookup_many, _services(request).banks, [signal_of(n, hashes[n]) for n in names], only
        )
        by_type = dict(zip(names, per_type, strict=True))
        if q.get("signal_type"):
            return JSONResponse(by_type.get(q["signal_type"], {}))
        return JSONResponse(by_type)
    if not q.get("signal") or not q.get("signal_type"):
        raise ApiError(400, "Either url or both signal and signal_type are required")
    sig = signal_of(q["signal_type"], q["signal"])
    [found] = await _in_pool(request, lookup_many, _services(request).banks, [sig], only)
    return JSONResponse(found)


@scoped("check")
async def lookup_post(request: Request, principal: Principal) -> Response:
    """Look up an uploaded file in every bank (HMA's POST /m/lookup).
    ---
    tags: [HMA matching]
    requestBody:
      content:
        multipart/form-data:
          schema: {$ref: '#/components/schemas/HmaUpload'}
    responses:
      200:
        description: "{signal_type: {bank: [{bank_content_id, distance}]}}"
        content: {application/json: {schema: {$ref: '#/components/schemas/HmaLookup'}}}
      400: {$ref: '#/components/responses/Error'}
    """
    if not is_multipart(request):
        raise ApiError(400, "Missing multipart/form-data file upload")
    hashes = await _hash_request(request, dict(request.query_params))
    names = list(hashes)
    only = _bank_filter(request.query_params.get("banks"))
    found = await _in_pool(
        request, lookup_many, _services(request).banks, [signal_of(n, hashes[n]) for n in names], only
    )
    return JSONResponse(dict(zip(names, found, strict=True)))


@scoped("check")
async def raw_lookup(request: Request, principal: Principal) -> Response:
    """Look up a hash (HMA's GET /m/raw_lookup; POST takes the parameters as a JSON object).
    ---
    tags: [HMA matching]
    parameters:
      - {name: signal, in: query, required: true, schema: {type: string}}
      - {name: signal_type, in: query, required: true, schema: {type: string}}
      - {name: include_distance, in: query, schema: {type: boolean}}
      - {name: banks, in: query, schema: {type: string}}
    responses:
      200:
        description: "{matches: [bank_content_id]} or {matches: [{bank_content_id, distance}]}"
        content: {application/json: {schema: {$ref: '#/components/schemas/HmaRawLookup'}}}
      400: {$ref: '#/components/responses/Error'}
    """
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        params.update(body)
    for name in ("signal", "signal_type", "banks"):
        if params.get(name) is not None and not isinstance(params[name], str):
            raise ApiError(400, f"{name} must be a string")
    if params.get("signal") is None:
        raise ApiError(400, "signal is required")
    if params.get("signal_type") is None:
        raise ApiError(400, "signal_type is required")
    sig = signal_of(params["signal_type"], params["signal"])
    with_distance = _flag(params.get("include_distance"), "include_distance")
    [found] = await _in_pool(request, lookup_many, _services(request).banks, [sig], _bank_filter(params.get("banks")))
    matches = [m for bank in sorted(found) for m in found[bank]]
    return JSONResponse({"matches": matches if with_distance else [m["bank_content_id"] for m in matches]})


# ---- hashing ----------------------------------------------------------------------------
@scoped("check")
async def hash_endpoint(request: Request, principal: Principal) -> Response:
    """Hash media (HMA's /h/hash): GET with ?url=, or POST one multipart file named photo or video.
    ---
    tags: [HMA hashing]
    parameters:
      - {name: url, in: query, schema: {type: string}, description: GET only}
      - {name: content_type, in: query, schema: {type: string, enum: [photo, video]}}
      - {name: types, in: query, schema: {type: string}}
    requestBody:
      content:
        multipart/form-data:
          schema: {$ref: '#/components/schemas/HmaUpload'}
    responses:
      200:
        description: "{signal_type: hash}"
        content: {application/json: {schema: {type: object, additionalProperties: {type: string}}}}
      400: {$ref: '#/components/responses/Error'}
    """
    if request.method == "POST" and not is_multipart(request):
        raise ApiError(400, "Missing multipart/form-data file upload")
    return JSONResponse(await _hash_request(request, dict(request.query_params)))


# ---- curation -----------------------------------------------------------------------------
def bank_config(name: str) -> dict[str, Any]:
    return {"name": name, "matching_enabled_ratio": 1.0}


def bank_names(request: Request) -> list[str]:
    """The banks holding at least one entry (cached per version of the bank table)."""
    services = _services(request)
    version = services.banks.version
    cached = services.bank_names_cache
    if cached is None or cached[0] != version:
        names = sorted({key.rsplit("/", 1)[0] for key in services.banks.stats()})
        services.bank_names_cache = cached = (version, names)
    return list(cached[1])


@scoped("banks:read")
async def banks_index(request: Request, principal: Principal) -> Response:
    """List the banks (HMA's GET /c/banks).
    ---
    tags: [HMA curation]
    responses:
      200:
        description: the banks
        content: {application/json: {schema: {type: array, items: {$ref: '#/components/schemas/HmaBank'}}}}
    """
    names = await _in_pool(request, bank_names, request)
    return JSONResponse([bank_config(n) for n in names])


@scoped("banks:read")
async def bank_show(request: Request, principal: Principal) -> Response:
    """One bank (HMA's GET /c/bank/NAME).
    ---
    tags: [HMA curation]
    responses:
      200:
        description: the bank
        content: {application/json: {schema: {$ref: '#/components/schemas/HmaBank'}}}
      404: {$ref: '#/components/responses/Error'}
    """
    name = request.path_params["name"]
    if name not in await _in_pool(request, bank_names, request):
        raise ApiError(404, f"bank '{name}' not found")
    return JSONResponse(bank_config(name))


def _bank_name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not name.strip() or len(name) > BANK_NAME_MAX or any(c.isspace() for c in name):
        raise ApiError(400, f"a bank name is 1-{BANK_NAME_MAX} characters without spaces")
    return name


def _labels(request: Request, given: dict[str, Any]) -> tuple[str, str]:
    api = _services(request).api
    out = []
    for name, default in (("category", api.bank_category), ("severity", api.bank_severity)):
        value = given.get(name, request.query_params.get(name)) or default
        if not isinstance(value, str):
            raise ApiError(400, f"{name} must be a string")
        out.append(value)
    return out[0], out[1]


def _note(value: Any) -> str | None:
    if not value:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "note should be a string")
    if len(value) > NOTE_MAX:
        raise ApiError(400, f"note must be at most {NOTE_MAX} characters")
    return value


def _metadata(raw: Any, content_id_field: Any = None, content_uri_field: Any = None) -> dict[str, Any] | None:
    """HMA's content metadata ({content_id, content_uri, json}), leniently: other keys are kept
    under `json` (Coop sends its own JSON as `metadata`, with content_id and content_uri as
    form fields of their own)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ApiError(400, "metadata form field must be valid JSON") from None
    if raw is not None and not isinstance(raw, dict):
        raise ApiError(400, "metadata should be a json object")
    raw = dict(raw or {})
    raw.pop("collab", None)
    out = {k: raw.pop(k) for k in ("content_id", "content_uri", "json") if k in raw}
    if raw:
        out["json"] = {**(out.get("json") or {}), **raw}
    for name, value in (("content_id", content_id_field), ("content_uri", content_uri_field)):
        if value and name not in out:
            out[name] = value
    for name in ("content_id", "content_uri"):
        if out.get(name) is not None and not isinstance(out[name], str):
            raise ApiError(400, f"Invalid metadata: {name} must be a string")
    return out or None


async def _write(
    request: Request, principal: Principal, action: str, bank: str, entries: list[Record], **what: Any
) -> None:
    services = _services(request)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(services.io, services.write_banks, entries)
    frames = sum(1 for e in entries if e["signal_type"] == "video_pdq")
    audit(
        principal.name,
        action,
        bank=bank,
        hashes=[
            {"signal_type": e["signal_type"], "hash": e["hash"]} for e in entries if e["signal_type"] != "video_pdq"
        ],
        video_frames=frames,
        category=entries[0]["category"] if entries else None,
        severity=entries[0]["severity"] if entries else None,
        **what,
    )


def _entries(
    bank: str, pairs: Iterable[tuple[str, str]], category: str, severity: str, source: str, item_id: str | None = None
) -> list[Record]:
    try:
        return [
            bank_entry(bank, kind, value, category, severity, source, item_id if kind == "video_pdq" else None)
            for kind, value in pairs
        ]
    except BankInputError as exc:
        raise ApiError(400, str(exc)) from None


@scoped("banks:write")
async def bank_add_content(request: Request, principal: Principal) -> Response:
    """Hash media and bank its hashes (HMA's POST /c/bank/NAME/content): a multipart file named
    photo or video, or ?url=.
    ---
    tags: [HMA curation]
    parameters:
      - {name: url, in: query, schema: {type: string}}
      - {name: content_type, in: query, schema: {type: string, enum: [photo, video]}}
      - {name: category, in: query, schema: {type: string}}
      - {name: severity, in: query, schema: {type: string, enum: [low, medium, high, critical]}}
    requestBody:
      content:
        multipart/form-data:
          schema:
            type: object
            properties:
              photo: {type: string, format: binary}
              video: {type: string, format: binary}
              metadata: {type: string, description: "JSON: {content_id, content_uri, json}"}
              note: {type: string}
              category: {type: string}
              severity: {type: string}
    responses:
      200:
        description: "{id, signals: {signal_type: hash}}"
        content: {application/json: {schema: {$ref: '#/components/schemas/HmaBankContent'}}}
      400: {$ref: '#/components/responses/Error'}
    """
    bank = _bank_name(request)
    given: dict[str, Any] = {}
    q = request.query_params
    if q.get("url"):
        if is_json(request):
            body = await read_json(request)
            given = body if isinstance(body, dict) else {}
        data, content_type = await _fetch(request, q["url"]), q.get("content_type")
    elif is_multipart(request):
        form = await read_form(request, max_files=1)
        if not form.files:
            raise ApiError(400, "Neither `url` nor multipart file upload was received")
        given = dict(form.fields)
        content_type, data, _ = form.files[0]
        if content_type not in CONTENT_TYPES:
            raise ApiError(400, f"no such content_type: '{content_type}'")
    else:
        raise ApiError(400, "Neither `url` nor multipart file upload was received")
    metadata = _metadata(
        given.get("metadata", q.get("metadata")),
        given.get("content_id", q.get("content_id")),
        given.get("content_uri", q.get("content_uri")),
    )
    note = _note(given.get("note", q.get("note")))
    category, severity = _labels(request, given)
    signals = await _in_pool(request, _signals, request, data, content_type)
    if content_type is None:
        content_type = "photo" if any(s["signal_type"] == "pdq" for s in signals) else "video"
    values = {s["signal_type"]: s["value"] for s in signals if s["signal_type"] in ("pdq", "md5", "sha256")}
    if content_type == "photo" and "pdq" not in values:
        raise ApiError(400, "the media is not a photo that can be hashed (no PDQ hash)")
    item = (metadata or {}).get("content_id") or values["sha256"]
    source = f"api:{principal.name}"
    pairs = [(s["signal_type"], s["value"]) for s in signals if s["signal_type"] in BANKED]
    entries = _entries(bank, pairs, category, severity, source, str(item))
    await _write(request, principal, "bank.add_content", bank, entries, metadata=metadata, note=note)
    primary = "pdq" if "pdq" in values else "md5"
    if content_type == "photo":
        shown = {"pdq": values["pdq"], "md5": values["md5"], "sha256": values["sha256"]}
    else:
        shown = {"video_md5": values["md5"], "video_sha256": values["sha256"]}
    return JSONResponse({"id": content_id(bank, primary, values[primary]), "signals": shown})


@scoped("banks:write")
async def bank_add_signal(request: Request, principal: Principal) -> Response:
    """Bank hashes (HMA's POST /c/bank/NAME/signal): a JSON object {signal_type: hash, ..., note?}.
    ---
    tags: [HMA curation]
    requestBody:
      content:
        application/json:
          schema: {type: object, additionalProperties: {type: string}, example: {pdq: "f8f8...", note: "why"}}
    responses:
      200:
        description: "{id, signals: {signal_type: hash}}"
        content: {application/json: {schema: {$ref: '#/components/schemas/HmaBankContent'}}}
      400: {$ref: '#/components/responses/Error'}
    """
    bank = _bank_name(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object of signal_type: hash")
    body = dict(body)
    note = _note(body.pop("note", None))
    category, severity = _labels(request, {k: body.pop(k) for k in ("category", "severity") if k in body})
    if not body:
        raise ApiError(400, "No signals given")
    pairs = []
    for name, value in body.items():
        kind = SIGNAL_TYPES.get(name)
        if kind is None:
            raise ApiError(400, f"No such signal type {name}")
        if not isinstance(value, str):
            raise ApiError(400, f"Invalid {name} signal: not a string")
        pairs.append((kind, value))
    entries = _entries(bank, pairs, category, severity, f"api:{principal.name}")
    await _write(request, principal, "bank.add_signal", bank, entries, note=note)
    first = entries[0]
    shown = {name: e["hash"] for name, e in zip(body, entries, strict=True)}
    return JSONResponse({"id": content_id(bank, first["signal_type"], first["hash"]), "signals": shown})
