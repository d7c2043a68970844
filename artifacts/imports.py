"""A model imported already signed by its maker: the model-signing signature beside the ONNX
file or the weights, checked against the trust policy when the model is exported; its digest
becomes the first material of the bundle's chain of attestations (docs/trust.md, "Signed
imports").

Where the signature is, as model-signing's command line writes it: `<file>.sig` signs the file
alone (`model_signing sign key weights.pt --signature weights.pt.sig`); `model.sig` in the
file's folder signs the whole folder (`model_signing sign key models/ --signature
models/model.sig`). A model with neither is unsigned: recorded so, and refused when the policy
says `imports.require_signed`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tapeout.artifacts.digest import SIGNATURE_FILE, file_digest
from tapeout.artifacts.policy import TrustPolicy
from tapeout.artifacts.signature import SignedModel, VerificationFailed

FILE_SIGNATURE_SUFFIX = ".sig"


@dataclass(frozen=True)
class ImportedModel:
    """The model file an export read (`name`: as the repository names it) and its maker's
    signature: where it is, its sha256 and who signed it, as the policy verified, and its
    bytes (the bundle keeps them; a target built on a Dask worker may not see the file);
    all None for an unsigned model."""

    name: str
    digest: str
    signature: Path | None = None
    signature_name: str | None = None
    signature_digest: str | None = None
    signer: str | None = None
    method: str | None = None
    signature_content: bytes | None = None

    @property
    def signed(self) -> bool:
        return self.signature is not None


def find_signature(model_file: Path) -> SignedModel | None:
    """The model-signing signature over `model_file`: `<file>.sig` over the file, else
    `model.sig` in its folder, over the folder — or over the file alone when that is what it
    says it signed (model-signing names a single file's one resource "."); None when there
    is neither."""
    beside = model_file.with_name(model_file.name + FILE_SIGNATURE_SUFFIX)
    if beside.is_file():
        return SignedModel(model_file, beside)
    folder = model_file.parent / SIGNATURE_FILE
    if not folder.is_file() or folder == model_file:
        return None
    return SignedModel(model_file if set(signed_resources(folder)) == {"."} else model_file.parent, folder)


def signed_resources(signature: Path) -> dict[str, str | None]:
    """What a model-signing signature says it signed, read and not verified: each resource's
    name (a path in the signed folder, or "." for a single file) and sha256; empty when the
    signature states no model-signing manifest."""
    from tapeout.artifacts.signature import statement_payload

    try:
        predicate = statement_payload(signature).get("predicate", {})
        resources = predicate.get("resources", []) if isinstance(predicate, dict) else []
        return {
            str(item["name"]): (str(item["digest"]) if item.get("algorithm") == "sha256" else None)
            for item in resources if isinstance(item, dict) and "name" in item
        }
    except (VerificationFailed, KeyError, TypeError):
        return {}


def check_import(
    model_file: Path, model: str, policy: TrustPolicy | None, name: str | None = None
) -> ImportedModel:
    """Verify the signature of an imported model against `policy`'s `imports` (for the
    pipeline's model name `model`), or find it unsigned. `name` is how the repository names
    the file (default: its own name).

    Raises:
        VerificationFailed: the model is signed but no policy admits the signer, or the
            signature or a signed file does not check (named); the model is unsigned and the
            policy requires signed imports.
    """
    name = name or model_file.name
    digest = file_digest(model_file)
    found = find_signature(model_file)
    if found is None:
        if policy is not None and policy.imports.require_signed:
            raise VerificationFailed(
                model_file,
                [f"the imported model is not signed (no {model_file.name}{FILE_SIGNATURE_SUFFIX} or "
                 f"{SIGNATURE_FILE} beside it) and the trust policy ({policy.source}) requires signed "
                 "imports (imports.require_signed)"],
            )
        return ImportedModel(name, digest)
    if policy is None:
        raise VerificationFailed(
            found.signature,
            [f"the imported model {name} is signed, but no trust policy says who may sign it: "
             "name its signer under imports.signers in the build's trust policy (signing.policy, "
             "or <home>/trust-policy.yaml)"],
        )
    verification = policy.verify_import(found, model)
    signature_name = str(Path(name).parent / found.signature.name) if "/" in name else found.signature.name
    content = found.signature.read_bytes()
    return ImportedModel(
        name, digest, found.signature, signature_name, hashlib.sha256(content).hexdigest(),
        verification.signer, verification.method, content,
    )
