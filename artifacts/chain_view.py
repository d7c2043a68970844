"""The chain of attestations as an auditor reads it (docs/trust.md, "The chain of
attestations"): a record for `tapeout trace --json`, lines for `verify --chain` and `trace`,
and the picture of `trace --html` — commit → fp32 model → calibration set and table → QDQ
model → compiled files → gates → bundle → registered version → promotions and approvals, each
node with its digest and whether the link that names it verified.
"""

from __future__ import annotations

import html
from pathlib import Path

from tapeout.artifacts.chain import ChainReport, check_chain
from tapeout.artifacts.policy import TrustPolicy
from tapeout.compilers.errors import InvalidInput


def chain_record(bundle: Path, policy: TrustPolicy, model: str) -> dict:
    """The chain of `bundle` checked against `policy`, as JSON: its format, whether every link
    verified (None for a bundle made before the chain), each link, the imported model's
    signature and every problem. A `bundle.json` tapeout cannot read is a problem here, not
    an error: the rest of the trace still stands."""
    try:
        report = check_chain(bundle, policy, model)
    except InvalidInput as error:
        return {"format": None, "verified": False, "links": [], "imported": None, "problems": [str(error)]}
    return {
        "format": report.format,
        "verified": report.ok if report.format >= 2 else None,
        "links": [
            {
                "stage": link.stage, "file": link.file, "signer": link.signer, "verified": link.verified,
                "subjects": dict(link.subjects), "materials": dict(link.materials), "problems": list(link.problems),
            }
            for link in report.links
        ],
        "imported": dict(report.imported) if report.imported is not None else None,
        "problems": list(report.problems),
    }


def render_report(chain: ChainReport) -> str:
    """One paragraph per verified link: stage, what it made, from what, signed by whom."""
    lines = [f"chain of attestations (bundle format {chain.format}): {len(chain.links)} links verified"]
    imported = chain.imported
    if imported is not None:
        state = f"signed ({imported['signature']}, by {imported.get('signer')})" if imported["signed"] else "unsigned"
        lines.append(f"  import     {imported['file']}: {state}")
    for link in chain.links:
        made = ", ".join(f"{name} {digest[:12]}" for name, digest in link.subjects.items())
        inputs = ", ".join(name if not digest else f"{name} {digest[:12]}" for name, digest in link.materials.items())
        lines.append(f"  {link.stage:<10} {made}\n             <- {inputs}\n             signed by {link.signer}")
    return "\n".join(lines)


def render_lines(record: dict) -> list[str]:
    """`trace`'s lines for the chain record of `chain_record`."""
    chain = record.get("chain")
    if chain is None:
        return []
    if chain["format"] == 1:
        return ["chain           none: the bundle is format 1, made before tapeout recorded one"]
    if chain["verified"]:
        stages = " → ".join(link["stage"] for link in chain["links"])
        imported = chain.get("imported") or {}
        start = ""
        if imported:
            start = f", from {imported['file']} " + (f"signed by {imported.get('signer')}" if imported["signed"] else "(unsigned)")
        return [f"chain           {len(chain['links'])} links verified: {stages}{start}"]
    return [f"chain           BROKEN: {problem}" for problem in chain["problems"]]


def render_html(record: dict) -> str:
    """The picture: one box per thing the chain links, left to right, each with its digest
    and a green or red border as the link that names it verified or not; the problems under
    it. Plain HTML and CSS, no scripts."""
    e = html.escape
    nodes = _nodes(record)
    boxes = "<span class=arrow>→</span>".join(
        f'<div class="node {"ok" if ok else "bad" if ok is False else "none"}"><b>{e(title)}</b>'
        + "".join(f"<br><code>{e(line)}</code>" for line in lines)
        + f"<br><small>{e(state)}</small></div>"
        for title, lines, ok, state in nodes
    )
    chain = record.get("chain") or {}
    problems = "".join(f"<p class=bad>{e(problem)}</p>" for problem in chain.get("problems", []))
    if chain.get("format") == 1:
        problems = "<p>No chain of attestations: the bundle is format 1, made before tapeout recorded one.</p>"
    return f"<div class=chain>{boxes}</div>{problems}"


CSS = (
    ".chain{display:flex;flex-wrap:wrap;align-items:center;gap:.3em;margin:1em 0}"
    ".node{border:3px solid #999;border-radius:6px;padding:.4em .6em;max-width:16em;word-break:break-all}"
    ".node.ok,.node.bad{color:inherit;font-weight:normal}"
    ".node.ok{border-color:#075}.node.bad{border-color:#b00;background:#fee}.arrow{font-size:1.5em;color:#555}"
    "pre.yaml{background:#f8f8f8;border:1px solid #ccc;padding:.5em;overflow-x:auto}"
)


def _nodes(record: dict) -> list[tuple[str, list[str], bool | None, str]]:
    """(title, lines, verified: True, False or None for not checked, what says so)."""
    chain = record.get("chain") or {}
    links = {link["stage"]: link for link in chain.get("links", [])}

    def by_link(stage: str) -> tuple[bool | None, str]:
        link = links.get(stage)
        if link is None:
            return (None, "no chain") if chain.get("format") == 1 else (False, f"{stage}: no statement")
        return (True, f"{stage} link verified") if link["verified"] else (False, f"{stage} link BROKEN")

    def digests(mapping: dict, *names: str) -> list[str]:
        return [f"{name} {mapping[name][:12]}" for name in names if mapping.get(name)]

    export, calibrate = links.get("export", {}), links.get("calibrate", {})
    nodes = []
    imported = chain.get("imported") or {}
    if imported.get("signed"):
        first = next(iter(export.get("materials", {}).items()), ("", ""))
        nodes.append(("maker's signature", [f"{first[0]} {first[1][:12]}", f"by {imported.get('signer')}"],
                      bool(imported.get("verified")), "verified at export, and again now"))
    source = record["source"]
    nodes.append(("commit", [str(source.get("commit"))[:12], str(source.get("uri"))], *by_link("export")))
    nodes.append(("fp32 model", digests(export.get("subjects", {}), "model/model.onnx"), *by_link("export")))
    calibration = record["calibration_set"]
    nodes.append(("calibration set", [f"{calibration.get('digest', '')[:12]} ({calibration.get('count')} samples)"],
                  *by_link("calibrate")))
    nodes.append(("calibration table", digests(calibrate.get("subjects", {}), "calibration/table.json"),
                  *by_link("calibrate")))
    nodes.append(("QDQ model", digests(links.get("quantize", {}).get("subjects", {}), "model/model.qdq.onnx"),
                  *by_link("quantize")))
    compiled = links.get("compile", {}).get("subjects") or {
        f"compiled/{name}": digest for name, digest in record["compiler"].get("files", {}).items()
    }
    nodes.append(("compiled", [f"{name} {digest[:12]}" for name, digest in compiled.items()]
                  + [f"{record['compiler']['name']} {record['compiler']['version']}"], *by_link("compile")))
    gates = record["gates"]
    nodes.append(("gates", [f"verdict {gates.get('verdict')}", f"validation set {str(gates.get('validation_set_digest'))[:12]}"],
                  *by_link("evaluate")))
    verification = record["verification"]
    nodes.append(("bundle", [record["bundle"]["digest"][:12], f"signed by {verification.get('signer')}"],
                  verification["verified"], "signature verified" if verification["verified"] else "signature FAILED"))
    registry = record.get("registry")
    if registry:
        ok = registry["bundle_digest_matches_tag"] and not registry["mismatches"]
        nodes.append(("version", [f"{registry['name']} v{registry['version']}",
                                  f"aliases: {', '.join(registry['aliases']) or 'none'}"],
                      ok, "serves this bundle" if ok else "NOT THIS VERSION'S BUNDLE"))
    promotions = record.get("promotions")
    if promotions is not None:
        moves = [f"{item['action']} {item['alias']} → v{item['to_version']}" for item in promotions["records"]]
        nodes.append(("promotions", moves or ["none recorded"], promotions["chain_ok"],
                      "audit log verified" if promotions["chain_ok"] else "audit log BROKEN"))
    approvals = record.get("approvals")
    if approvals:
        # An approval that does not count (its approver is the builder, say) breaks no link:
        # it is listed as such; the box is red only when none counts.
        counting = sum(1 for item in approvals if item["counts"])
        nodes.append(("approvals", [
            f"{item['alias']} by {item['approver']}" + ("" if item["counts"] else " (does not count)")
            for item in approvals
        ], counting > 0, f"{counting} of {len(approvals)} count today"))
    return nodes
