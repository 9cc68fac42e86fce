"""PII and secret redaction: typed placeholders such as ``[EMAIL]``, with counts per kind.

Hand-written patterns plus validators (Luhn and card prefixes for cards,
:mod:`ipaddress` for IPv6, digit counts and separator rules for phones), because
the libraries that do this well offline either need a language model download
(Presidio needs spaCy models) or cover only one kind (phonenumbers). Every
pattern here is measured on the corpus in ``tests/pii_corpus.py``.

What is deliberately *not* redacted, because it cannot be told apart from
ordinary numbers without context: national phone numbers without a trunk ``0``
or ``+`` prefix (Spanish ``912 345 678``), US numbers written as ten bare
digits, and personal names.

>>> redact("mail jane.doe@example.org or call +44 20 7946 0958").text
'mail [EMAIL] or call [PHONE]'
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

#: The built-in kinds, in priority order: where two matches overlap, the earlier kind wins.
BUILTIN_KINDS = (
    "PRIVATE_KEY",
    "AWS_ACCESS_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "API_KEY",
    "JWT",
    "BEARER_TOKEN",
    "SECRET",
    "EMAIL",
    "IPV6",
    "IPV4",
    "CREDIT_CARD",
    "PHONE",
)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IMAGE_SUFFIXES = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp"}
# Issuer prefixes of the card networks (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro).
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|6011|65|64[4-9]|35|36|38|30[0-5]|62|5[06-8]|6[37])")


@dataclass(frozen=True, slots=True)
class Span:
    """One piece of text to replace: ``text[start:end]`` is of ``kind``."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Redacted:
    """Redacted text and how many placeholders of each kind it got."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    group: int = 0  # which group to replace (a secret's value, not its key name)
    accept: Callable[[str], str | None] | None = None  # validates, may trim; None rejects


class _Probe:
    """Cheap facts about a text, computed at most once, that decide which patterns can match at all."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._digits: int | None = None
        self._lower: str | None = None

    @property
    def digits(self) -> int:
        """How many digits the text holds."""
        if self._digits is None:
            self._digits = sum(map(self.text.count, "0123456789"))
        return self._digits

    def has(self, *needles: str) -> bool:
        """True when any needle occurs in the text."""
        text = self.text
        # A plain loop: any() over a generator was a measurable share of curation time.
        for needle in needles:  # noqa: SIM110
            if needle in text:
                return True
        return False

    def has_folded(self, *needles: str) -> bool:
        """True when any (lower-case) needle occurs in the lower-cased text."""
        if self._lower is None:
            self._lower = self.text.lower()
        return any(needle in self._lower for needle in needles)


# A necessary condition per kind, checked with substring tests before the regular
# expression runs: most chat text holds no PII, and scanning it with a dozen
# patterns dominated the curation time.
_WORTH_SCANNING: dict[str, Callable[[_Probe], bool]] = {
    "PRIVATE_KEY": lambda p: p.has("-----BEGIN"),
    "AWS_ACCESS_KEY": lambda p: p.has(
        "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "APKA", "AROA"
    ),
    "GITHUB_TOKEN": lambda p: p.has("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "SLACK_TOKEN": lambda p: p.has("xox", "xapp-", "hooks.slack.com"),
    "API_KEY": lambda p: p.has("sk-", "sk_", "rk_", "AIza"),
    "JWT": lambda p: p.has("eyJ"),
    "BEARER_TOKEN": lambda p: p.has_folded("bearer"),
    "SECRET": lambda p: p.has_folded("pass", "pwd", "secret", "key", "token"),
    "EMAIL": lambda p: p.has("@"),
    "IPV6": lambda p: p.has("::") or p.text.count(":") >= 7,
    "IPV4": lambda p: p.digits >= 4 and p.text.count(".") >= 3,
    "CREDIT_CARD": lambda p: p.digits >= 13,
    "PHONE": lambda p: p.digits >= 8,
}


def luhn_ok(digits: str) -> bool:
    """True when ``digits`` passes the Luhn checksum that every card number carries.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(candidate: str) -> str | None:
    separators = set(re.sub(r"\d", "", candidate))
    digits = re.sub(r"\D", "", candidate)
    if len(separators) > 1 or not 13 <= len(digits) <= 19:
        return None
    if not _CARD_PREFIX.match(digits) or not luhn_ok(digits):
        return None
    return candidate


def _ipv6(candidate: str) -> str | None:
    candidate = candidate.rstrip(".:")
    address = candidate.split("%", 1)[0]
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return None
    groups = [g for g in re.split(r"[:.]", address) if g]
    # Code such as a[1::2] or std::map is a valid address too; demand an address-like shape.
    if not any(c.isdigit() for c in address):
        return None
    if address != "::1" and len(groups) < 3 and not any(len(g) >= 3 for g in groups):
        return None
    return candidate


def _email(candidate: str) -> str | None:
    # Retina image names (icon@2x.png) have the shape of an address.
    return None if candidate.rsplit(".", 1)[-1].lower() in _IMAGE_SUFFIXES else candidate


def _digit_count(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _trimmed(candidate: str, ok: Callable[[str], bool]) -> str | None:
    """The longest prefix of ``candidate``, cut at separators, that ``ok`` accepts.

    A greedy pattern can swallow a number that follows a phone number
    ("020 7946 0958 24 hours"); cutting trailing groups recovers the phone.
    """
    while candidate:
        if ok(candidate):
            return candidate
        cut = max(candidate.rfind(sep) for sep in " .-/(")
        if cut <= 0:
            return None
        candidate = candidate[:cut].rstrip(" .-/(")
    return None


def _international_phone(candidate: str) -> str | None:
    def ok(text: str) -> bool:
        digits = _digit_count(text) - (2 if text.startswith("00") else 0)
        return 8 <= digits <= 15 and text.count("(") == text.count(")")

    return _trimmed(candidate, ok)


def _national_phone(candidate: str) -> str | None:
    def ok(text: str) -> bool:
        separators = re.findall(r"[ ./-]+", text.replace("(", "").replace(")", ""))
        # A phone uses one separator after the area code; a date and a time mix them.
        uniform = len(set(separators[1:])) <= 1
        return 9 <= _digit_count(text) <= 12 and uniform and len(separators) >= 1

    return _trimmed(candidate, ok)


_BUILTIN_RULES: tuple[_Rule, ...] = (
    _Rule(
        "PRIVATE_KEY",
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
            r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)"
        ),
    ),
    _Rule(
        "AWS_ACCESS_KEY",
        re.compile(
            r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"
        ),
    ),
    _Rule(
        "GITHUB_TOKEN",
        re.compile(
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})(?![A-Za-z0-9_])"
        ),
    ),
    _Rule(
        "SLACK_TOKEN",
        re.compile(
            r"(?<![A-Za-z0-9-])(?:xox[abposr]-[A-Za-z0-9-]{10,250}|xapp-\d-[A-Za-z0-9-]{10,250})"
            r"|https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]+"
        ),
    ),
    _Rule(
        "API_KEY",
        re.compile(
            r"(?<![A-Za-z0-9_-])(?:sk-[A-Za-z0-9_-]{20,}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|AIza[0-9A-Za-z_-]{35})(?![A-Za-z0-9_-])"
        ),
    ),
    _Rule("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    _Rule("BEARER_TOKEN", re.compile(r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{12,}=*)"), group=1),
    _Rule(
        "SECRET",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:[A-Za-z0-9]+[_-])*(?:aws_secret_access_key|client[_-]?secret|secret[_-]?key|api[_-]?key|apikey"
            r"|access[_-]?token|auth[_-]?token|private[_-]?token|password|passwd|pwd|secret|token)"
            r"[\"']?\s*[:=]\s*[\"']?([^\s\"',;\[][^\s\"',;]{5,})"
        ),
        group=1,
    ),
    _Rule(
        "EMAIL",
        re.compile(
            r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
            r"[A-Za-z]{2,24}(?![\w-])"
        ),
        accept=_email,
    ),
    _Rule(
        "IPV6",
        re.compile(r"(?<![\w:.])[0-9A-Fa-f:]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[0-9A-Za-z]+)?"),
        accept=_ipv6,
    ),
    _Rule("IPV4", re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?:/\d{{1,2}})?(?!\w|\.\d)")),
    _Rule("CREDIT_CARD", re.compile(r"(?<![\w.,+-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)"), accept=_card),
    # International: +CC or 00CC, then groups; the validator counts digits (E.164: at most 15).
    _Rule(
        "PHONE",
        re.compile(r"(?<![\w+])(?:\+|\b00)[1-9][0-9 .()/-]{6,24}\d(?![\w])"),
        accept=_international_phone,
    ),
    # North American: (555) 123-4567, 555-123-4567, 1-800-555-0199.
    _Rule(
        "PHONE",
        re.compile(r"(?<![\w+(.-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w]|[.-]\d)"),
    ),
    # European national numbers start with the trunk 0: 030 1234567, 06 12 34 56 78, 020 7946 0958.
    _Rule(
        "PHONE",
        re.compile(r"(?<![\w+.,/:-])\(?0\d{1,4}\)?(?:[ ./-]{1,2}\d{2,8}){1,5}(?![\w]|[.,/:-]\d)"),
        accept=_national_phone,
    ),
)


class Redactor:
    """Finds and replaces PII and secrets; built once, used for every text.

    ``extra`` maps more placeholder kinds to regular expressions; they rank
    after the built-in kinds when matches overlap.
    """

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        extra_rules = tuple(_Rule(kind, re.compile(pattern)) for kind, pattern in (extra or {}).items())
        self._rules = _BUILTIN_RULES + extra_rules

    def find(self, text: str) -> list[Span]:
        """The non-overlapping spans to replace, in text order."""
        taken: list[Span] = []
        probe = _Probe(text)
        for rule in self._rules:
            worth = _WORTH_SCANNING.get(rule.kind)
            if worth is not None and not worth(probe):
                continue
            for match in rule.pattern.finditer(text):
                start, end = match.span(rule.group)
                if rule.accept is not None:
                    accepted = rule.accept(match.group(rule.group))
                    if accepted is None:
                        continue
                    end = start + len(accepted)
                if start < end and not any(s.start < end and start < s.end for s in taken):
                    taken.append(Span(rule.kind, start, end))
        return sorted(taken, key=lambda span: span.start)

    def redact(self, text: str) -> Redacted:
        """``text`` with every span replaced by ``[KIND]``, and the counts per kind."""
        spans = self.find(text)
        if not spans:
            return Redacted(text)
        pieces, cursor = [], 0
        for span in spans:
            pieces += [text[cursor : span.start], f"[{span.kind}]"]
            cursor = span.end
        pieces.append(text[cursor:])
        return Redacted("".join(pieces), dict(Counter(span.kind for span in spans)))


@lru_cache(maxsize=16)
def _cached(extra: tuple[tuple[str, str], ...]) -> Redactor:
    return Redactor(dict(extra))


def redactor_for(extra: Mapping[str, str] | None = None) -> Redactor:
    """A shared :class:`Redactor` for these extra patterns (compiled once per process)."""
    return _cached(tuple(sorted((extra or {}).items())))


def redact(text: str, extra: Mapping[str, str] | None = None) -> Redacted:
    """Redact ``text`` with the built-in patterns and ``extra`` ones."""
    return redactor_for(extra).redact(text)
