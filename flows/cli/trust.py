"""The trust commands: verify, trace, approve, promote, rollback, pull, gc, keys (tapeout.artifacts).

Exit 1 for a failed verification or a refused promotion, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

from tapeout.compilers.errors import InvalidInput
from tapeout.flows.cli.common import bundle_for, existing_registry, open_registry

_DIGEST = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


def add_commands(subparsers, common: argparse.ArgumentParser) -> None:
    trust = argparse.ArgumentParser(add_help=False)
    trust.add_argument("--policy", type=Path, help="trust policy YAML (default: <home>/trust-policy.yaml, else the home's key)")
    trust.add_argument("--public-key", type=Path, help="trust exactly this EC public key")
    trust.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<home>/mlflow.db)")

    verify = subparsers.add_parser("verify", parents=[common, trust], help="check hashes and signature")
    verify.add_argument("reference", help="bundle folder, MODEL-TARGET@VERSION or @ALIAS")
    verify.add_argument("--json", action="store_true")
    verify.add_argument(
        "--chain", action="store_true",
        help="also check the chain of attestations, link by link (docs/trust.md)",
    )
    verify.set_defaults(func=verify_command)

    trace = subparsers.add_parser("trace", parents=[common, trust], help="an auditor's view of a version")
    trace.add_argument(
        "reference",
        help="MODEL-TARGET@VERSION, @ALIAS, a bundle folder, a compiled file found in the field, or its sha256",
    )
    trace.add_argument("--json", action="store_true", help="print one JSON object")
    trace.add_argument("--html", type=Path, metavar="FILE", help="also write a one-page HTML report")
    trace.add_argument("--sbom", action="store_true", help="print the bundle's bill of materials (CycloneDX JSON)")
    trace.set_defaults(func=trace_command)

    promote = subparsers.add_parser(
        "promote", parents=[common, trust], help="move an alias to a verified, gate-passed version"
    )
    promote.add_argument("reference", help="MODEL-TARGET@VERSION (or @ALIAS)")
    promote.add_argument("--to", dest="alias", required=True, help="alias to move, e.g. production")
    promote.add_argument("--reason", default="", help="why, for the audit record")
    promote.add_argument("--firmware", help="the deployed firmware revision (default: the one it was built for)")
    promote.add_argument("--actor", default="", help="who asked, recorded beside the OS user")
    promote.add_argument("--json", action="store_true")
    promote.set_defaults(func=promote_command)

    approve = subparsers.add_parser(
        "approve", parents=[common, trust], help="sign your approval of moving an alias to a version"
    )
    approve.add_argument("reference", help="MODEL-TARGET@VERSION (or @ALIAS)")
    approve.add_argument("--to", dest="alias", required=True, help="the alias it may move, e.g. production")
    approve.add_argument(
        "--key", type=Path, required=True, help="your EC private key (PEM); with --certificate, the certificate's key"
    )
    approve.add_argument("--certificate", type=Path, help="your leaf certificate (PEM): sign with it")
    approve.add_argument(
        "--certificate-chain", type=Path, action="append", default=[], metavar="PEM",
        help="an intermediate certificate of --certificate (repeat for more)",
    )
    approve.add_argument("--reason", default="", help="why, for the approval and the audit record")
    approve.add_argument("--actor", default="", help="who asked, recorded beside the OS user")
    approve.add_argument("--json", action="store_true")
    approve.set_defaults(func=approve_command)

    rollback = subparsers.add_parser(
        "rollback", parents=[common, trust], help="move an alias back to the previously promoted version"
    )
    rollback.add_argument("name", metavar="MODEL-TARGET")
    rollback.add_argument("--alias", default="production")
    rollback.add_argument("--reason", default="")
    rollback.add_argument("--actor", default="")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(func=rollback_command)

    pull = subparsers.add_parser("pull", parents=[common, trust], help="download and verify a bundle")
    pull.add_argument("reference", help="MODEL-TARGET@VERSION or @ALIAS")
    pull.add_argument("-o", "--output", type=Path, required=True, help="new or empty folder")
    pull.set_defaults(func=pull_command)

    gc = subparsers.add_parser(
        "gc", parents=[common],
        help="clean up after killed builds; remove bundles, stored sets and cache nothing points to",
    )
    gc.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<home>/mlflow.db)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    gc.add_argument("--cache-limit", default="5G", metavar="SIZE", help="bound <home>/cache (e.g. 500M, 5G; default 5G)")
    gc.add_argument(
        "--stage-store-limit", default="20G", metavar="SIZE",
        help="bound the stage store in the MLflow artifact store (default 20G)",
    )
    gc.add_argument(
        "--keep-recent", type=float, default=24.0, metavar="HOURS",
        help="never remove bundles, stored sets or stage-store entries used more recently (default 24)",
    )
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=gc_command)

    keys = subparsers.add_parser("keys", parents=[common], help="signing keys")
    key_commands = keys.add_subparsers(metavar="ACTION")
    registry_option = argparse.ArgumentParser(add_help=False)
    registry_option.add_argument(
        "--tracking-uri", help="registry to name the versions an old key signed (default: the home's, if any)"
    )
    init = key_commands.add_parser(
        "init", parents=[common, registry_option],
        help="create the signing key (on purpose: also when a key earlier versions were signed with is gone)",
    )
    init.set_defaults(func=keys_init_command)
    rotate = key_commands.add_parser(
        "rotate", parents=[common, registry_option],
        help="replace the signing key; the trust policy keeps trusting the old one",
    )
    rotate.set_defaults(func=keys_rotate_command)


# -- shared ------------------------------------------------------------------------------------


def _policy(args: argparse.Namespace):
    from tapeout.artifacts.policy import policy_for

    return policy_for(args.home_path, args.policy, args.public_key)


def _anchor(args: argparse.Namespace, policy, model: str, *, signs: bool = False):
    from tapeout.artifacts.audit import home_anchor

    return home_anchor(args.home_path / "keys", policy.keys_for(model), model, signs=signs)


# -- verify ------------------------------------------------------------------------------------


def verify_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.audit import require_whole
    from tapeout.artifacts.chain import require_chain
    from tapeout.artifacts.chain_view import render_report
    from tapeout.artifacts.policy import bundle_model_name
    from tapeout.artifacts.promotion import check_served_as

    policy = _policy(args)
    chain = None
    with bundle_for(args) as (bundle, version):
        result = policy.verify(bundle, version.name if version else None)
        if version is not None:
            check_served_as(bundle, version)
            require_whole(open_registry(args), version.name, _anchor(args, policy, version.name), bundle)
        if args.chain:
            chain = require_chain(bundle, policy, version.name if version else bundle_model_name(bundle) or "")
    where = f"{version.name} version {version.version}" if version else str(bundle)
    if args.json:
        document = {
            "verified": True, "bundle": where, "signer": result.signer, "method": result.method,
            "files": result.files, "policy": policy.source,
        }
        if chain is not None:
            document["chain"] = [
                {"stage": link.stage, "file": link.file, "signer": link.signer,
                 "subjects": dict(link.subjects), "materials": dict(link.materials)}
                for link in chain.links
            ]
            document["imported"] = chain.imported
        print(json.dumps(document))
    else:
        print(f"verified {where}: {result.files} files match the signature ({result.method}) by {result.signer}")
        if chain is not None:
            print(render_report(chain))
    return 0


# -- trace -------------------------------------------------------------------------------------


def trace_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.audit import read_history
    from tapeout.artifacts.trace import look_up, render_html, render_text, trace_bundle

    policy = _policy(args)
    if args.sbom:
        return _print_sbom(args, policy)
    lookup = None
    reference = args.reference
    path = Path(reference)
    if path.is_file() or (not path.exists() and _DIGEST.match(reference)):
        lookup, reference = look_up(open_registry(args), path if path.is_file() else None, reference)
    registry = None
    with bundle_for(args, reference) as (bundle, version):
        if version is None:
            registry, version = _version_of_folder(args, bundle)
        registry = registry or (open_registry(args) if version is not None else None)
        history = (
            read_history(registry, version.name, anchor=_anchor(args, policy, version.name))
            if version is not None else None
        )
        record = trace_bundle(bundle, version, policy, history)
        if history is not None:
            from tapeout.artifacts.approvals import of_version

            record["approvals"] = of_version(
                registry, history, policy, version, record["bundle"]["digest"], record["verification"]["signer"] or ""
            )
    if lookup is not None:
        record["lookup"] = lookup
    if args.html:
        args.html.write_text(render_html(record))
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        if lookup is not None:
            print(f"{lookup['file'] or 'digest'} sha256 {lookup['sha256']} is in {', '.join(lookup['matches'])}")
        print(render_text(record))
        if args.html:
            print(f"report written to {args.html}")
    registry_ok = not record.get("registry", {}).get("mismatches")
    history_ok = record.get("promotions", {}).get("chain_ok", True)
    chain_ok = record["chain"]["verified"] is not False  # None: a bundle made before the chain
    return 0 if record["verification"]["verified"] and registry_ok and history_ok and chain_ok else 1


def _print_sbom(args: argparse.Namespace, policy) -> int:
    """The bundle's sbom.cdx.json as it was signed: printed only once the signature verifies
    and, for a registered version, the bundle is the one the version is served as."""
    from tapeout.artifacts.chain import SBOM_FILE
    from tapeout.artifacts.promotion import check_served_as

    with bundle_for(args) as (bundle, version):
        policy.verify(bundle, version.name if version else None)
        if version is not None:
            check_served_as(bundle, version)
        path = bundle / SBOM_FILE
        if not path.is_file():
            raise InvalidInput(f"{bundle}: no {SBOM_FILE}: the bundle was made before tapeout wrote one (format 1)")
        print(path.read_text(), end="")
    return 0


def _version_of_folder(args: argparse.Namespace, bundle: Path):
    """(registry, the bundle folder's registered version), or (None, None) where there is no
    registry to ask (none is created just to look) or it does not answer."""
    from tapeout.artifacts.policy import bundle_model_name
    from tapeout.artifacts.trace import version_of_bundle

    if bundle_model_name(bundle) is None:
        return None, None
    try:
        registry = existing_registry(args)
        if registry is None:
            return None, None
        return registry, version_of_bundle(registry, bundle)
    except Exception:  # no registry here: the folder is traced on its own
        return None, None


# -- promote, rollback, pull ---------------------------------------------------------------------


def _outcome_json(outcome) -> dict:
    return {
        "name": outcome.name,
        "alias": outcome.alias,
        "from_version": outcome.from_version,
        "to_version": outcome.to_version,
        "changed": outcome.record is not None,
        "checks": [asdict(check) for check in outcome.checked.checks],
        "signer": outcome.checked.signer,
        "record": asdict(outcome.record) if outcome.record else None,
    }


def _print_outcome(outcome, verb: str) -> None:
    for check in outcome.checked.checks:
        print(f"  ok  {check.name}: {check.detail}")
    if outcome.record is None:
        print(f"{outcome.name} version {outcome.to_version} is already {outcome.alias}; nothing changed")
    else:
        print(
            f"{verb} {outcome.name} {outcome.alias}: version {outcome.from_version or '(none)'} → "
            f"{outcome.to_version} (audit record {outcome.record.record_id})"
        )


def promote_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.promotion import promote

    policy = _policy(args)
    registry = open_registry(args)
    outcome = promote(
        registry, args.reference, args.alias, policy,
        firmware=args.firmware, reason=args.reason, actor=args.actor,
        anchor=_anchor(args, policy, registry.resolve(args.reference).name, signs=True),
    )
    if args.json:
        print(json.dumps(_outcome_json(outcome), indent=2))
    else:
        _print_outcome(outcome, "promoted")
    return 0


def approve_command(args: argparse.Namespace) -> int:
    import tempfile

    from tapeout.artifacts.promotion import approve
    from tapeout.artifacts.signing_methods import signer_types
    from tapeout.flows.config import SigningConfig

    if args.certificate_chain and args.certificate is None:
        raise InvalidInput("--certificate-chain: needs --certificate")
    method = "key" if args.certificate is None else "certificate"
    config = SigningConfig(
        method=method, private_key=str(args.key),
        certificate=str(args.certificate) if args.certificate else None,
        certificate_chain=[str(path) for path in args.certificate_chain],
    )
    policy = _policy(args)
    registry = open_registry(args)
    anchor = _anchor(args, policy, registry.resolve(args.reference).name, signs=True)
    # The approver's key is theirs, not the home's: its public half is published for this
    # approval only (the approval carries it), never into the home's keys.
    with tempfile.TemporaryDirectory(prefix="tapeout-approver-keys-") as keys:
        signer = signer_types()[method].from_config(config, lambda text: Path(text).resolve(), Path(keys))
        record, standing = approve(
            registry, args.reference, args.alias, policy, signer,
            reason=args.reason, actor=args.actor, anchor=anchor,
        )
    if args.json:
        print(json.dumps({
            "record": asdict(record), "met": standing.met, "standing": standing.describe(),
            "counted": [asdict(item) for item in standing.counted],
            "not_counted": [asdict(item) for item in standing.refused],
        }, indent=2))
    else:
        print(
            f"approved {record.model} version {record.to_version} for {record.alias} as {record.signer} "
            f"(audit record {record.record_id})"
        )
        print(f"{record.alias}: {standing.describe()}")
    return 0


def rollback_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.promotion import rollback

    policy = _policy(args)
    outcome = rollback(
        open_registry(args), args.name, args.alias, policy,
        reason=args.reason, actor=args.actor, anchor=_anchor(args, policy, args.name, signs=True),
    )
    if args.json:
        print(json.dumps(_outcome_json(outcome), indent=2))
    else:
        _print_outcome(outcome, "rolled back")
    return 0


def pull_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.promotion import pull

    policy = _policy(args)
    registry = open_registry(args)
    anchor = _anchor(args, policy, registry.resolve(args.reference).name)
    version, output, signer = pull(registry, args.reference, policy, args.output, anchor)
    print(f"pulled {version.name} version {version.version} into {output}, verified: signed by {signer}")
    return 0


# -- gc ------------------------------------------------------------------------------------------


def _size(text: str, option: str) -> int:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise InvalidInput(f"{option}: expected a size like 500M or 5G, found {text!r}")
    return int(float(match[1]) * units[match[2].upper()])


def gc_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.gc import collect

    limit = _size(args.cache_limit, "--cache-limit")
    store_limit = _size(args.stage_store_limit, "--stage-store-limit")
    if args.keep_recent < 0:
        raise InvalidInput(f"--keep-recent: expected hours >= 0, found {args.keep_recent}")
    collected = collect(
        args.home_path, open_registry(args), dry_run=args.dry_run, cache_limit=limit,
        stage_store_limit=store_limit, keep_recent_hours=args.keep_recent,
    )
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **asdict(collected)}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for title, items in (
        (f"{verb} staging folder", collected.staging),
        ("would mark KILLED" if args.dry_run else "marked KILLED", collected.killed_runs),
        (f"{verb} bundle", collected.bundles),
        (f"{verb} stored calibration set", collected.calibration_sets),
        (f"{verb} cache entry", collected.cache_entries),
        (f"{verb} stage-store entry", collected.stage_store_entries),
    ):
        for item in items:
            print(f"{title}: {item}")
    for what, (before, after), bound in (
        ("cache", collected.cache_bytes, limit), ("stage store", collected.stage_store_bytes, store_limit),
    ):
        print(f"{what}: {before / 1024**2:.1f} MiB, {after / 1024**2:.1f} MiB after (limit {bound / 1024**2:.0f} MiB)")
    for item in collected.left_alone:
        print(f"left alone: {item}")
    return 0


# -- keys ----------------------------------------------------------------------------------------


def keys_init_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.keyring import init_on_purpose
    from tapeout.artifacts.signing import signer_identity

    key, created = init_on_purpose(args.home_path / "keys", existing_registry(args))
    pair = key.pair
    state = "created" if created else "exists"
    print(f"{state}: {pair.private_key} (private, mode 0600)\n        {pair.public_key}")
    print(f"signer identity: {signer_identity(pair.public_key)}")
    if key.retired is not None:
        print(f"the previous public key is kept as {key.retired}")
        if key.signed_by_retired:
            print(
                f"these versions were signed with it and no longer verify against the home's key: "
                f"{', '.join(key.signed_by_retired)} (trust it again with `--public-key {key.retired}` "
                "or in a trust policy)"
            )
    return 0


def keys_rotate_command(args: argparse.Namespace) -> int:
    from tapeout.artifacts.keyring import rotate
    from tapeout.artifacts.signing import signer_identity

    key = rotate(args.home_path, existing_registry(args))
    print(f"created: {key.pair.private_key} (private, mode 0600)\n        {key.pair.public_key}")
    print(f"signer identity: {signer_identity(key.pair.public_key)}")
    print(f"retired: {key.retired}" + (f" (signed {', '.join(key.signed_by_retired)})" if key.signed_by_retired else ""))
    print(f"trust policy {key.policy} trusts both")
    return 0
