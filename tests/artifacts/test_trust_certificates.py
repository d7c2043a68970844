"""The `certificate` method against the clock and against subject spelling, with real
certificate chains made here by `cryptography`:

- model-signing checks a chain as of the leaf's own notBefore, so a leaf that expired in
  2020, or a leaf under an intermediate that expired, verified. A certificate signature
  carries no trusted timestamp, so the chain must be valid when it is verified; signing
  with an expired or not-yet-valid certificate fails;
- a pinned subject is compared as an X.509 name, attribute by attribute and in order, not
  as a string.

The expired signatures are made with model-signing itself (as an older tool, or someone
with an old key, would), since tapeout refuses to make them."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from tapeout.artifacts.policy import load_policy
from tapeout.artifacts.signing import CertificateSigner, VerificationFailed, sign_bundle, verify_certificate
from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli import main
from test_trust_signing import make_bundle, make_ca

NOW = datetime.datetime.now(datetime.timezone.utc)


def release_name(*order: str):
    """The release signer's subject; the usual DER order is O, then CN (printed in RFC 4514
    order, most specific first: 'CN=tapeout release,O=Example')."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attributes = {"O": x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"), "CN": x509.NameAttribute(NameOID.COMMON_NAME, "tapeout release")}
    return x509.Name([attributes[key] for key in order or ("O", "CN")])


IN_2019_2020 = (datetime.datetime(2019, 1, 1, tzinfo=datetime.timezone.utc), datetime.datetime(2020, 6, 30, tzinfo=datetime.timezone.utc))
SINCE_2019 = (datetime.datetime(2019, 6, 1, tzinfo=datetime.timezone.utc), NOW + datetime.timedelta(days=365))


def sign_with_model_signing(bundle: Path, signer: CertificateSigner) -> Path:
    from model_signing import hashing, signing

    config = signing.Config().set_hashing_config(
        hashing.Config().set_ignored_paths(paths=["model.sig"], ignore_git_paths=False)
    )
    config.use_certificate_signer(
        private_key=signer.private_key, signing_certificate=signer.certificate, certificate_chain=list(signer.chain)
    )
    config.sign(bundle, bundle / "model.sig")
    return bundle


def policy_file(folder: Path, root: Path, subject: str = "CN=tapeout release,O=Example") -> Path:
    path = folder / "policy.yaml"
    path.write_text(f"models:\n  - certificates: {{roots: [{root}], subjects: ['{subject}']}}\n")
    return path


def verify(bundle: Path, policy: Path, capsys) -> tuple[int, str]:
    code = main(["verify", str(bundle), "--policy", str(policy), "--home", str(bundle.parent / "home")])
    return code, capsys.readouterr().err


def test_a_leaf_that_expired_in_2020_neither_signs_nor_verifies(tmp_path, capsys):
    ca = make_ca(tmp_path / "pki")
    old = ca["leaf"]("tapeout release", valid=IN_2019_2020, name=release_name())
    with pytest.raises(InvalidInput, match=r"cannot sign now: the leaf certificate 'CN=tapeout release,O=Example' expired on 2020-06-30"):
        sign_bundle(make_bundle(tmp_path / "refused"), old)
    assert not (tmp_path / "refused" / "model.sig").exists()

    bundle = sign_with_model_signing(make_bundle(tmp_path / "bundle"), old)
    code, error = verify(bundle, policy_file(tmp_path, ca["root"]), capsys)
    assert code == 1
    assert "the leaf certificate 'CN=tapeout release,O=Example' expired on 2020-06-30 00:00:00 UTC" in error
    assert "carries no trusted timestamp" in error and "Traceback" not in error


def test_a_leaf_under_an_expired_intermediate_does_not_verify(tmp_path, capsys):
    ca = make_ca(tmp_path / "pki", intermediate_valid=IN_2019_2020)
    leaf = ca["leaf"]("tapeout release", valid=SINCE_2019, name=release_name())  # issued while the intermediate was valid
    with pytest.raises(InvalidInput, match="the intermediate certificate 'O=Example,CN=Example Intermediate CA' expired on 2020-06-30"):
        sign_bundle(make_bundle(tmp_path / "refused"), leaf)
    bundle = sign_with_model_signing(make_bundle(tmp_path / "bundle"), leaf)
    code, error = verify(bundle, policy_file(tmp_path, ca["root"]), capsys)
    assert code == 1
    assert "the intermediate certificate 'O=Example,CN=Example Intermediate CA' expired on 2020-06-30" in error


def test_a_certificate_not_yet_valid_cannot_sign(tmp_path):
    ca = make_ca(tmp_path / "pki")
    future = ca["leaf"]("tapeout release", valid=(NOW + datetime.timedelta(days=2), NOW + datetime.timedelta(days=30)), name=release_name())
    with pytest.raises(InvalidInput, match="the leaf certificate 'CN=tapeout release,O=Example' is not valid before"):
        sign_bundle(make_bundle(tmp_path / "bundle"), future)


def test_a_valid_chain_still_signs_and_verifies(tmp_path, capsys):
    ca = make_ca(tmp_path / "pki")
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, ca["leaf"]("tapeout release", name=release_name()))
    assert verify(bundle, policy_file(tmp_path, ca["root"]), capsys)[0] == 0


# -- subjects are names, not strings ------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A bundle signed by a leaf whose subject is DER-ordered O=Example, CN=tapeout release
    (printed in RFC 4514 order: 'CN=tapeout release,O=Example')."""
    folder = tmp_path_factory.mktemp("subjects")
    ca = make_ca(folder / "pki")
    bundle = make_bundle(folder / "bundle")
    sign_bundle(bundle, ca["leaf"]("tapeout release", name=release_name()))
    return bundle, ca["root"]


@pytest.mark.parametrize(
    "pinned",
    ["CN=tapeout release,O=Example", "cn=tapeout release, o=Example", "CN = tapeout release , O = example", "2.5.4.3=tapeout release,O=Example"],
)
def test_a_subject_matches_however_the_same_name_is_spelled(signed, pinned):
    bundle, root = signed
    assert verify_certificate(bundle, [root], subjects=[pinned]).method == "certificate"


def test_the_same_attributes_in_another_order_are_another_name_and_the_refusal_says_so(signed):
    bundle, root = signed
    with pytest.raises(VerificationFailed) as refused:
        verify_certificate(bundle, [root], subjects=["O=Example,CN=tapeout release"])
    reason = refused.value.reasons[0]
    assert "signer outside the policy" in reason
    assert "same attributes in another order" in reason and "pin 'CN=tapeout release,O=Example'" in reason


def test_a_leaf_whose_subject_is_reordered_is_not_the_pinned_signer(tmp_path, capsys):
    """The CA issues a leaf whose subject holds the pinned attributes in the other order
    (DER CN, then O): as an X.509 name it is someone else, and is refused."""
    ca = make_ca(tmp_path / "pki")
    bundle = make_bundle(tmp_path / "bundle")
    sign_bundle(bundle, ca["leaf"]("tapeout release", name=release_name("CN", "O")))
    code, error = verify(bundle, policy_file(tmp_path, ca["root"]), capsys)
    assert code == 1
    assert "signer outside the policy: certificate subject 'O=Example,CN=tapeout release'" in error
    assert "same attributes in another order" in error


def test_a_subject_that_is_not_a_name_is_refused_when_the_policy_loads(tmp_path):
    path = policy_file(tmp_path, tmp_path / "root.pem", subject="tapeout release")
    with pytest.raises(InvalidInput, match=r"models.0.certificates.subjects: 'tapeout release' is not an RFC 4514 name"):
        load_policy(path)


def test_the_subject_in_the_trust_documentation_matches_what_trace_prints(signed):
    """docs/trust.md's example pins the subject a leaf like this one shows."""
    import re

    documentation = (Path(__file__).parents[2] / "docs" / "trust.md").read_text()
    pinned = re.search(r'subjects: \["([^"]+)"\]', documentation)[1]
    bundle, root = signed
    assert verify_certificate(bundle, [root], subjects=[pinned]).method == "certificate"
