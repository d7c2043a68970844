"""X.509 details of the `certificate` signing method: names compared as names, and validity
checked against a time that can be trusted.

Subjects. A policy pins a leaf's subject as an RFC 4514 string; it is parsed into an
`x509.Name` and compared with the certificate's subject attribute by attribute, in order
(RFC 5280 §7.1: a distinguished name is a *sequence* of RDNs), values compared
case-insensitively with whitespace runs collapsed (as RFC 4518's caseIgnoreMatch does for
the common string types). Spaces around separators and lower-case attribute keywords
("cn=") are accepted; an unparseable subject is refused when the policy is loaded.

Validity. model-signing checks a certificate chain as of the leaf's own notBefore, so a
chain that expired years ago passes. A certificate signature (DSSE over the in-toto
statement, signed locally) carries no trusted timestamp — no transparency-log entry, no
RFC 3161 token — so nothing proves *when* it was made, and any time it claims (the
provenance's finishedOn) is the signer's own word. The chain must therefore be valid at the
time it is checked: signing with an expired or not-yet-valid leaf, intermediate or root is
refused, and so is verifying one. (Keyless Sigstore signatures do carry a trusted time —
Rekor's integrated time and TSA timestamps — and sigstore-python checks the chain at that
time; they are not handled here.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from tapeout.compilers.errors import InvalidInput


def parse_name(text: str):
    """An RFC 4514 string as an `x509.Name`, tolerating spaces around `,` `+` `=` and
    lower-case attribute keywords.

    Raises:
        ValueError: not a distinguished name.
    """
    from cryptography import x509

    parts, separators, current, escaped = [], [], [], False
    for character in text:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            current.append(character)
            escaped = True
        elif character in ",+":
            parts.append("".join(current))
            separators.append(character)
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    cleaned = []
    for part in parts:
        keyword, equals, value = part.partition("=")
        keyword = keyword.strip()
        if not equals or not keyword:
            raise ValueError(f"{text!r} is not an RFC 4514 name (expected TYPE=value, found {part.strip()!r})")
        value = value.lstrip()
        if not value.endswith("\\ "):  # an escaped trailing space is part of the value
            value = value.rstrip()
        cleaned.append(f"{keyword.upper() if keyword.isalpha() else keyword}={value}")
    joined = cleaned[0] + "".join(separator + part for separator, part in zip(separators, cleaned[1:]))
    try:
        return x509.Name.from_rfc4514_string(joined)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an RFC 4514 name (write it as `tapeout trace` prints a subject, e.g. "
            "'CN=tapeout release,O=Example')"
        ) from None


def _comparable(name) -> tuple[frozenset, ...]:
    return tuple(
        frozenset((item.oid.dotted_string, " ".join(str(item.value).split()).casefold()) for item in rdn)
        for rdn in name.rdns
    )


def subject_matches(subject, pinned: Iterable[str]) -> bool:
    """Whether the certificate subject `subject` (an x509.Name) is one of the `pinned`
    RFC 4514 names; an unparseable pin matches nothing."""
    wanted = _comparable(subject)
    for text in pinned:
        try:
            if _comparable(parse_name(text)) == wanted:
                return True
        except ValueError:
            continue
    return False


def order_hint(subject, pinned: Iterable[str]) -> str:
    """A note when a pin names the subject's attributes in another order (an X.509 name
    is ordered, so it does not match), else ''."""
    mine = sorted(map(sorted, _comparable(subject)))
    for text in pinned:
        try:
            theirs = parse_name(text)
        except ValueError:
            continue
        if sorted(map(sorted, _comparable(theirs))) == mine and _comparable(theirs) != _comparable(subject):
            return (
                f" (the pinned {text!r} holds the same attributes in another order; X.509 names are "
                f"ordered: pin {subject.rfc4514_string()!r} as printed by tapeout trace)"
            )
    return ""


def validity_problems(chain: Sequence, roots: Sequence = (), when: datetime | None = None) -> list[str]:
    """Why the leaf (`chain[0]`), the intermediates after it, or the `roots` that issued the
    last of them are not valid at `when` (default: now), one line each."""
    when = when or datetime.now(timezone.utc)
    issuers = {chain[-1].issuer} if chain else set()
    named = [("leaf", chain[0])] if chain else []
    named += [("root" if c.subject == c.issuer else "intermediate", c) for c in chain[1:]]
    named += [("root", root) for root in roots if root.subject in issuers and root not in chain]
    problems = []
    for role, certificate in named:
        subject = certificate.subject.rfc4514_string()
        if when > certificate.not_valid_after_utc:
            problems.append(
                f"the {role} certificate {subject!r} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
        elif when < certificate.not_valid_before_utc:
            problems.append(
                f"the {role} certificate {subject!r} is not valid before "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
    return problems


def read_certificates(path: Path) -> list:
    """Every PEM certificate in `path`.

    Raises:
        InvalidInput: unreadable, or not PEM certificates.
    """
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise InvalidInput(f"{path}: cannot read the certificate ({error.strerror})") from error
    except ValueError as error:
        raise InvalidInput(f"{path}: expected PEM certificates ({error})") from error
    return certificates


def subject_alternative_names(certificate) -> tuple[str, ...]:
    """The certificate's SANs (e-mail, DNS, URI...), as text; none without the extension."""
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for name in names)
