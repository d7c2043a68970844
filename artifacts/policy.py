"""The trust policy: who may sign what (docs/trust.md).

A YAML file lists, per registered model (`<model>-<target>`, shell-style patterns), the signers
whose signatures `verify`, `trace`, `promote`, `rollback` and `pull` accept:

```yaml
version: 1
models:
  - match: "digits-cnn-*"
    keys: [keys/release.pub]                 # EC public keys (paths relative to this file)
    certificates:
      roots: [pki/root.pem]                  # trust anchors; the chain rides in model.sig
      subjects: ["CN=tapeout release,O=Example"]   # pinned leaf subjects (RFC 4514) ...
      sans: [release@example.com]            # ... and/or pinned SANs; one of them is required
    sigstore:
      trust_config: null                     # default: the one shipped with tapeout
      identities:
        - identity: https://github.com/example/models/.github/workflows/release.yml@refs/heads/main
          issuer: https://token.actions.githubusercontent.com
imports:                                     # models imported already signed by their maker
  require_signed: true                       # refuse to build from an unsigned model file
  signers:                                   # who may sign them, per model name (`model.name`)
    - match: "digits-*"
      keys: [keys/vendor.pub]                # the same fields as a model's rule
```

An `aliases` section says who may move an alias (docs/trust.md, "Approvals"): for an alias
and the registered models matching `match`, how many distinct approvers must sign an approval
(`tapeout approve`) before `tapeout promote` moves it, who they are — the signer forms above,
and keys also by their identity `key:sha256:<hex>` — and whether the builder (the bundle's
signer) may be one of them:

```yaml
aliases:
  - alias: production
    match: "digits-cnn-*"
    approvals: 2
    approvers:
      keys: [keys/alice.pub, "key:sha256:9f2c...e1"]
      certificates: {roots: [pki/root.pem], sans: [bob@example.com]}
    builder_may_approve: false               # the default
```

Without a policy file the default policy trusts one key — the home's `keys/signing-key.pub`
(or `--public-key`) — for every model, which is what a local build signs with.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tapeout.artifacts.documents import read_json_object
from tapeout.artifacts.keys import PUBLIC_KEY_FILE
from tapeout.artifacts.signature import Signed, SignedModel, SignedStatement, Verification, read_signature
from tapeout.compilers.errors import InvalidInput

POLICY_FILE = "trust-policy.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CertificateRule(_Strict):
    roots: list[str] = Field(min_length=1)
    subjects: list[str] = Field(default_factory=list)
    sans: list[str] = Field(default_factory=list)

    @field_validator("subjects")
    @classmethod
    def _names(cls, subjects: list[str]) -> list[str]:
        from tapeout.artifacts.certificates import parse_name

        for subject in subjects:
            parse_name(subject)  # ValueError names the subject
        return subjects

    @model_validator(mode="after")
    def _pinned(self) -> "CertificateRule":
        if not self.subjects and not self.sans:
            raise ValueError("pin at least one subject or SAN: any leaf under the root would pass otherwise")
        return self


class KeylessIdentity(_Strict):
    identity: str
    issuer: str


class SigstoreRule(_Strict):
    trust_config: str | None = None
    identities: list[KeylessIdentity] = Field(min_length=1)


class ModelRule(_Strict):
    match: str = "*"
    keys: list[str] = Field(default_factory=list)
    certificates: CertificateRule | None = None
    sigstore: SigstoreRule | None = None


class ImportRule(_Strict):
    """Models imported already signed (docs/trust.md, "Signed imports"): who may sign them,
    per model name, and whether an unsigned one is refused."""

    require_signed: bool = False
    signers: list[ModelRule] = Field(default_factory=list)


_KEY_IDENTITY = re.compile(r"^key:sha256:[0-9a-f]{64}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")


class ApproverRule(_Strict):
    """Who may approve: the signer forms of a model rule. A key is a public key file or its
    identity, `key:sha256:<hex>` (an approval carries its signer's public key)."""

    keys: list[str] = Field(default_factory=list)
    certificates: CertificateRule | None = None
    sigstore: SigstoreRule | None = None

    @field_validator("keys")
    @classmethod
    def _key_forms(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if key.startswith("key:") and not _KEY_IDENTITY.match(key):
                raise ValueError(f"{key!r}: expected a public key file or key:sha256:<64 lowercase hex digits>")
        return keys

    @model_validator(mode="after")
    def _someone(self) -> "ApproverRule":
        if not self.keys and self.certificates is None and self.sigstore is None:
            raise ValueError("name at least one approver: keys, certificates or sigstore")
        return self


class AliasRule(_Strict):
    """What moving `alias` of the registered models matching `match` takes."""

    alias: str
    match: str = "*"
    approvals: int = Field(ge=1, description="distinct approvers needed")
    approvers: ApproverRule
    builder_may_approve: bool = False

    @field_validator("alias")
    @classmethod
    def _alias_name(cls, alias: str) -> str:
        if not _ALIAS.match(alias) or alias.isdigit() or alias == "candidate":
            raise ValueError(
                f"{alias!r}: expected an alias promote moves, like production (letters, digits, - and _; "
                "not candidate, which tapeout run sets)"
            )
        return alias


class PolicyDocument(_Strict):
    version: Literal[1] = 1
    models: list[ModelRule] = Field(min_length=1)
    imports: ImportRule = Field(default_factory=ImportRule)
    aliases: list[AliasRule] = Field(default_factory=list)


@dataclass(frozen=True)
class TrustPolicy:
    """A loaded policy: its rules with every path made absolute, and where it came from."""

    source: str
    rules: tuple[ModelRule, ...]
    base: Path
    aliases: tuple[AliasRule, ...] = ()
    imports: ImportRule = ImportRule()

    @classmethod
    def single_key(cls, public_key: Path) -> "TrustPolicy":
        public_key = public_key.resolve()
        return cls(f"default: the key {public_key}", (ModelRule(match="*", keys=[str(public_key)]),), public_key.parent)

    def rules_for(self, model: str | None) -> list[ModelRule]:
        return [
            rule for rule in self.rules
            if rule.match == "*" or (model is not None and fnmatch.fnmatchcase(model, rule.match))
        ]

    def keys_for(self, model: str | None) -> list[Path]:
        """The EC public keys the policy admits for `model`."""
        return [self.path(key) for rule in self.rules_for(model) for key in rule.keys]

    def alias_rule(self, model: str, alias: str) -> AliasRule | None:
        """The first `aliases` entry for `alias` whose pattern matches `model`, if any."""
        return next(
            (rule for rule in self.aliases if rule.alias == alias and fnmatch.fnmatchcase(model, rule.match)), None
        )

    def path(self, text: str) -> Path:
        """A path the policy names (relative to the policy file), made absolute."""
        return (self.base / text).resolve()

    def verify(self, bundle: Path | Signed, model: str | None = None) -> Verification:
        """Verify `bundle` (a bundle folder, or a signed statement of its chain) with the
        signer the policy allows for `model` (default: the model named in the bundle's
        provenance).

        Raises:
            VerificationFailed: the signer is outside the policy, or the signature or any
                file does not check (named).
            InvalidInput: a key, certificate or trust config the policy names is unreadable.
        """
        model = model or (bundle_model_name(bundle) if isinstance(bundle, Path) else None)
        who = f"for {model}" if model else "for this bundle"
        return read_signature(bundle).verify(
            bundle, self.rules_for(model), self.path, f"the policy ({self.source}) allows {who}"
        )

    def verify_import(self, imported: SignedModel | SignedStatement, model: str) -> Verification:
        """Verify a model imported already signed (or, in a bundle, the maker's signature
        kept without the model) with the signer `imports.signers` allows for `model` (the
        pipeline's model name).

        Raises:
            VerificationFailed: the signer is not one of them, or the signature or a file of
                the model does not check (named).
            InvalidInput: a key, certificate or trust config the policy names is unreadable.
        """
        rules = [
            rule for rule in self.imports.signers
            if rule.match == "*" or fnmatch.fnmatchcase(model, rule.match)
        ]
        return read_signature(imported).verify(
            imported, rules, self.path, f"the policy ({self.source}) allows for imports of {model}"
        )


def load_policy(path: Path) -> TrustPolicy:
    """Read and validate a policy file.

    Raises:
        InvalidInput: unreadable, not YAML, or a field is unknown, missing or wrong (named).
    """
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InvalidInput(f"{path}: cannot read the trust policy ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise InvalidInput(f"{path}: the trust policy is not valid YAML ({error})") from error
    try:
        parsed = PolicyDocument.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        raise InvalidInput(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None
    return TrustPolicy(
        str(path.resolve()), tuple(parsed.models), path.resolve().parent, tuple(parsed.aliases), parsed.imports
    )


def policy_for(home: Path, policy: Path | None = None, public_key: Path | None = None) -> TrustPolicy:
    """The policy a command uses: `--policy`, else `--public-key` alone, else
    `<home>/trust-policy.yaml` when present, else the home's own key."""
    if policy is not None:
        return load_policy(policy)
    if public_key is not None:
        return TrustPolicy.single_key(public_key)
    if (home / POLICY_FILE).is_file():
        return load_policy(home / POLICY_FILE)
    return TrustPolicy.single_key(home / "keys" / PUBLIC_KEY_FILE)


def bundle_model_name(bundle: Path) -> str | None:
    """`<model>-<target>` from the bundle's provenance (its external parameters), if readable."""
    try:
        provenance = read_json_object(bundle / "provenance.json")
        parameters = provenance["predicate"]["buildDefinition"]["externalParameters"]
        return f"{parameters['pipeline']['model']['name']}-{parameters['target']}"
    except (InvalidInput, KeyError, TypeError):
        return None
