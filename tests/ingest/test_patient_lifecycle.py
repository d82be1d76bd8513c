"""A01 → ORU → A08 (partial update) → A40 (merge) over a real MLLP socket, then the FHIR state.

Expected states follow the issue and the HL7 v2-to-FHIR IG: in an A08 an empty field leaves the
stored value alone and `""` clears it; A40 retires the prior Patient (active=false, link
replaced-by), the survivor `replaces` it, and the prior patient's clinical resources move to
the survivor.
"""

from __future__ import annotations

from typing import Any

from app.ingest.mllp import MllpServer
from tests.ingest.conftest import Wiring
from tests.ingest.ingest_helpers import MllpClient, message, parse_ack

MSH = "MSH|^~\\&|ADT1|GHH|HESTIA|HESTIA|{ts}||{kind}|{cid}|P|2.5.1"

A01 = message(
    MSH.format(ts="20240101120000", kind="ADT^A01^ADT_A01", cid="LC-1"),
    "EVN|A01|20240101120000",
    "PID|1||1001^^^GHH^MR||EVERYMAN^ADAM^A||19610615|M|||2222 HOME STREET^^GREENSBORO^NC^27401"
    "||^PRN^PH^^1^555^5552004|^WPN^PH^^1^555^5553001||M",
    "PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR||||7|||||V1001^^^GHH^VN|||||||||||||"
    "||||||||||||20240101110000",
)
ORU = message(
    MSH.format(ts="20240102080000", kind="ORU^R01^ORU_R01", cid="LC-2"),
    "PID|1||1001^^^GHH^MR||EVERYMAN^ADAM^A||19610615|M",
    "OBR|1|ORD1|FIL1|2345-7^Glucose^LN|||20240102073000",
    "OBX|1|NM|2345-7^Glucose^LN||98|mg/dL^mg/dL^UCUM|70-99|N|||F|||20240102073000",
)
# PID-5 changed, PID-7 and PID-11 empty (keep), PID-13 new home phone, PID-16 "" (clear).
A08 = message(
    MSH.format(ts="20240103090000", kind="ADT^A08^ADT_A01", cid="LC-3"),
    "EVN|A08|20240103090000",
    'PID|1||1001^^^GHH^MR||EVERYMAN^ADAM^B|||M|||||^PRN^PH^^1^555^5559999|||""',
)
A40 = message(
    MSH.format(ts="20240104100000", kind="ADT^A40^ADT_A39", cid="LC-4"),
    "EVN|A40|20240104100000",
    "PID|1||2002^^^GHH^MR||EVERYMAN^ADAM^B||19610615|M",
    "MRG|1001^^^GHH^MR",
)


def _only(refs: list[str], kind: str) -> str:
    found = [r for r in refs if r.startswith(f"{kind}/")]
    assert len(found) == 1, found
    return found[0]


def _unversioned(ref: str) -> str:
    return ref.split("/_history/")[0]


async def test_admit_update_merge_sequence(wiring: Wiring, mllp: MllpServer) -> None:
    client = await MllpClient.connect(mllp.port)
    try:
        acks = [parse_ack(await client.send(m)) for m in (A01, ORU, A08, A40)]
    finally:
        await client.close()
    assert [(a.code, a.control_id) for a in acks] == [
        ("AA", "LC-1"),
        ("AA", "LC-2"),
        ("AA", "LC-3"),
        ("AA", "LC-4"),
    ]

    admitted = await wiring.raw.list_by_status(("mapped",), limit=10)
    by_cid = {p.control_id: p for p in admitted}
    assert set(by_cid) == {"LC-1", "LC-2", "LC-3", "LC-4"}
    old_ref = _unversioned(_only(by_cid["LC-1"].resources, "Patient"))
    encounter_ref = _unversioned(_only(by_cid["LC-1"].resources, "Encounter"))
    observation_ref = _unversioned(_only(by_cid["LC-2"].resources, "Observation"))
    report_ref = _unversioned(_only(by_cid["LC-2"].resources, "DiagnosticReport"))
    survivor_refs = {_unversioned(r) for r in by_cid["LC-4"].resources if r.startswith("Patient/")}
    assert old_ref in survivor_refs and len(survivor_refs) == 2
    (survivor_ref,) = survivor_refs - {old_ref}

    old = await wiring.current(old_ref)
    assert old is not None
    # A08: the name changed, birth date and address were left alone, marital status cleared,
    # the home phone replaced while the work phone stayed.
    assert old["name"][0]["given"][:2] == ["ADAM", "B"]
    assert old["birthDate"] == "1961-06-15"
    assert old["address"][0]["line"] == ["2222 HOME STREET"]
    assert "maritalStatus" not in old
    phones = sorted((t["use"], t["value"][-7:]) for t in old["telecom"])
    assert phones == [("home", "5559999"), ("work", "5553001")]
    # A40: the prior patient is retired and points at the survivor.
    assert old["active"] is False
    assert {"other": {"reference": survivor_ref}, "type": "replaced-by"} in old["link"]

    survivor = await wiring.current(survivor_ref)
    assert survivor is not None
    assert survivor.get("active") is True
    assert {"other": {"reference": old_ref}, "type": "replaces"} in survivor["link"]
    assert any(i["value"] == "2002" for i in survivor["identifier"])

    # The prior patient's clinical resources now reference the survivor.
    for ref in (encounter_ref, observation_ref, report_ref):
        resource = await wiring.current(ref)
        assert resource is not None
        assert resource["subject"]["reference"] == survivor_ref, ref
        assert old_ref not in str(resource)

    # The merge's Provenance names the moved versions; the earlier Provenance still names the
    # versions written then (lineage is history, it is not rewritten).
    merge_provenance = await _provenance(wiring, by_cid["LC-4"].provenance)
    merge_targets = {t["reference"] for t in merge_provenance["target"]}
    assert {_unversioned(t) for t in merge_targets} >= {
        old_ref,
        survivor_ref,
        encounter_ref,
        observation_ref,
        report_ref,
    }
    admit_provenance = await _provenance(wiring, by_cid["LC-1"].provenance)
    assert f"{old_ref}/_history/1" in {t["reference"] for t in admit_provenance["target"]}


async def _provenance(wiring: Wiring, versioned: str | None) -> dict[str, Any]:
    assert versioned is not None
    kind, resource_id, _, vid = versioned.split("/")
    doc = await wiring.store.read_version(kind, resource_id, int(vid))
    assert doc is not None
    resource: dict[str, Any] = doc["resource"]
    return resource
