"""The home's signing key as a trust anchor: made once, never replaced without a word.

The first build of a home makes `<home>/keys/signing-key.pem` and publishes its public half
as `signing-key.pub`, which the default trust policy trusts. Every version signed since
verifies against that public key, so a new key must never take its place silently:

- a build whose key is gone while its `.pub` remains, or (with the home's own registry)
  while versions signed by the key method are registered, stops with an error naming the
  key and those versions — it does not make a new key;
- `tapeout keys init` makes a new key on purpose; an orphaned `.pub` is kept under
  `keys/retired/` and the versions it signed are named (they verify only with it);
- `tapeout keys rotate` makes a new key and writes the old and the new public key into the
  home's trust policy (`<home>/trust-policy.yaml`), so earlier versions keep verifying;
- a key configured elsewhere (`signing.private_key`) without a `.pub` beside it gets its
  public half published under `keys/configured/`, never over `signing-key.pub`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.registry import Registry, RegistryUnavailable
from tapeout.artifacts.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    KeyPair,
    write_atomically,
    init_keys,
    public_key_for,
    signer_identity,
)
from tapeout.compilers.errors import InvalidInput

RETIRED = "retired"
CONFIGURED = "configured"
_LISTED = 8  # versions named in a message; the rest are counted


class TrustAnchorMissing(InvalidInput):
    """The home's signing key is gone but what it signed is still there."""


@dataclass(frozen=True)
class NewKey:
    """A key made on purpose: the pair, the retired public key (if one was kept), the
    versions it signed, and the trust policy that was written (rotation only)."""

    pair: KeyPair
    retired: Path | None
    signed_by_retired: tuple[str, ...]
    policy: Path | None = None


def key_for_build(
    keys_dir: Path, open_registry: Callable[[], Registry], registry_is_local: bool
) -> tuple[KeyPair, bool]:
    """The home's key pair for a build, made on the home's first build; returns (pair, created).
    The registry (`open_registry()`) is only opened when the key is missing.

    Raises:
        TrustAnchorMissing: the private key is gone but its public key remains, or the
            home's own registry (`registry_is_local`) holds versions signed by the key method.
        RegistryUnavailable: the registry cannot be searched for those versions.
    """
    private, public = keys_dir / PRIVATE_KEY_FILE, keys_dir / PUBLIC_KEY_FILE
    if not private.exists():
        if public.exists():
            identity = _identity_or_none(public)
            versions = signed_by(open_registry(), identity) if identity else []
            raise TrustAnchorMissing(
                f"{private}: the signing key is missing, but its public key {public} remains"
                + (f" and {_listed(versions)} were signed with it" if versions else "")
                + "; restore the key, or make a new one on purpose with `tapeout keys rotate` "
                "(earlier versions stay trusted) or `tapeout keys init`"
            )
        if registry_is_local:
            versions = _search(open_registry(), "tags.signing_method = 'key'")
            if versions:
                raise TrustAnchorMissing(
                    f"{private}: the signing key is missing, but this home's registry holds "
                    f"{_listed(versions)} signed with a key; restore {keys_dir}, or make a new key "
                    "on purpose with `tapeout keys init`"
                )
    pair, created = init_keys(keys_dir)
    public_key_for(pair.private_key)  # fail fast: unusable, or readable by others
    return pair, created


def init_on_purpose(keys_dir: Path, registry: Registry | None) -> tuple[NewKey, bool]:
    """`tapeout keys init`: the existing pair, or a new one; an orphaned public key is kept
    under `keys/retired/` and the versions it signed are named. Returns (key, created)."""
    if (keys_dir / PRIVATE_KEY_FILE).exists():
        pair, created = init_keys(keys_dir)
        return NewKey(pair, None, ()), created
    retired, versions = _retire(keys_dir, registry)
    pair, created = init_keys(keys_dir)
    return NewKey(pair, retired, tuple(versions)), created


def rotate(home: Path, registry: Registry | None) -> NewKey:
    """`tapeout keys rotate`: retire the current public key, make a new pair, and write both
    into `<home>/trust-policy.yaml` (made if missing; else every rule that lists the current
    key also lists the retired one).

    Raises:
        InvalidInput: there is no key to rotate, or the policy file is broken.
    """
    keys_dir = home / "keys"
    if not (keys_dir / PUBLIC_KEY_FILE).exists():
        raise InvalidInput(f"{keys_dir / PUBLIC_KEY_FILE}: no key to rotate; `tapeout keys init` makes the first one")
    policy = _trust_both(home, keys_dir / PUBLIC_KEY_FILE, _retired_path(keys_dir))
    retired, versions = _retire(keys_dir, registry)
    (keys_dir / PRIVATE_KEY_FILE).unlink(missing_ok=True)
    pair, _ = init_keys(keys_dir)
    return NewKey(pair, retired, tuple(versions), policy)


def published_public_key(keys_dir: Path, private_key: Path) -> Path:
    """The public half of a key kept outside the home, published as
    `keys/configured/<fingerprint>.pub` (a name no other key can take).

    Raises:
        InvalidInput: the key is unusable (see `public_key_for`).
    """
    import hashlib

    pem = public_key_for(private_key)
    folder = keys_dir / CONFIGURED
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"key-{hashlib.sha256(pem).hexdigest()[:16]}.pub"
    if not path.exists():
        write_atomically(path, pem, 0o644, replace=True)
    return path


def signed_by(registry: Registry | None, identity: str) -> list[str]:
    """`name@version` of every version whose `signer` tag is `identity`."""
    return _search(registry, f"tags.signer = '{identity}'") if registry is not None else []


# -- helpers -----------------------------------------------------------------------------------


def _retire(keys_dir: Path, registry: Registry | None) -> tuple[Path | None, list[str]]:
    public = keys_dir / PUBLIC_KEY_FILE
    if not public.exists():
        return None, []
    identity = _identity_or_none(public)
    versions = signed_by(registry, identity) if identity else []
    retired = _retired_path(keys_dir)
    retired.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(public, retired)
    public.unlink()
    return retired, versions


def _retired_path(keys_dir: Path) -> Path:
    identity = _identity_or_none(keys_dir / PUBLIC_KEY_FILE) or "unreadable"
    return keys_dir / RETIRED / f"signing-key-{identity.removeprefix('key:sha256:')[:16]}.pub"


def _trust_both(home: Path, current: Path, retired: Path) -> Path:
    """Write the policy that trusts the current key (soon the new one) and the retired one."""
    import yaml

    from tapeout.artifacts.policy import POLICY_FILE, load_policy

    path = home / POLICY_FILE
    current_entry = current.relative_to(home).as_posix()
    retired_entry = retired.relative_to(home).as_posix()
    if not path.exists():
        document = {"version": 1, "models": [{"match": "*", "keys": [current_entry, retired_entry]}]}
    else:
        policy = load_policy(path)  # refuses a broken file before anything is changed
        document = {"version": 1, "models": []}
        for rule in policy.rules:
            entry = rule.model_dump(exclude_defaults=True)
            keys = list(rule.keys)
            if any((policy.base / key).resolve() == current.resolve() for key in keys) and retired_entry not in keys:
                keys.append(retired_entry)
            if keys:
                entry["keys"] = keys
            document["models"].append(entry)
        if policy.aliases:  # who may approve is not the home's key: kept as it is
            document["aliases"] = [rule.model_dump(exclude_defaults=True) for rule in policy.aliases]
    write_atomically(path, yaml.safe_dump(document, sort_keys=False).encode(), 0o644, replace=True)
    return path


def _identity_or_none(public: Path) -> str | None:
    try:
        return signer_identity(public)
    except InvalidInput:
        return None


def _search(registry: Registry | None, query: str) -> list[str]:
    if registry is None:
        return []
    try:
        found = registry.search_versions(query)
    except Exception as error:
        raise RegistryUnavailable(
            f"MLflow at {registry.tracking_uri}: cannot search the registered versions ({type(error).__name__}: {error})"
        ) from error
    return sorted(f"{item.name}@{item.version}" for item in found)


def _listed(versions: list[str]) -> str:
    shown = ", ".join(versions[:_LISTED])
    more = f" and {len(versions) - _LISTED} more" if len(versions) > _LISTED else ""
    return f"version{'s' if len(versions) > 1 else ''} {shown}{more}"
