"""The institution and node registers (issue 14.2, 14.4): who reaches them, their rules,
their audit rows, what a referenced row becomes (deactivated, never deleted), and what the
request forms and the transfers are offered."""

from __future__ import annotations

import re
from datetime import date

import pytest
import sqlalchemy as sa
from markupsafe import escape

from app.audit import Action, AuditEvent
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.models import Institution, Request
from app.requests.statuses import Kind, Priority
from app.transfers import service as transfers
from app.transfers.models import DicomNode, Direction, NodeRole, Transfer
from app.transfers.nodes import upsert_node
from app.transfers.routes import _nodes
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_export, valid_import

NUH = "Nottingham University Hospitals NHS Trust"


def _audit(action: Action) -> list[str]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.action == str(action))
                                   .order_by(AuditEvent.id)))


def _institution(name: str, **kw: object) -> Institution:
    inst = Institution(name=name, **kw)
    db.session.add(inst)
    db.session.commit()
    return inst


def _node(name: str, role: str = "remote", institution: str = "") -> DicomNode:
    node = upsert_node(name, name.split()[0].upper()[:16], "127.0.0.1", 9, role, institution)
    db.session.commit()
    return node


def _fresh(model, row_id: int):  # noqa: ANN001, ANN202
    db.session.expire_all()
    return db.session.get(model, row_id)


def _submit(client, url: str, data: dict[str, str]) -> Request:  # noqa: ANN001
    answer = post_form(client, url, data)
    assert answer.status_code == 302, answer.get_data(as_text=True)[:800]
    call_ref = answer.headers["Location"].split("/")[2].split("?")[0]
    db.session.expire_all()
    return db.session.scalars(sa.select(Request).where(Request.call_ref == call_ref)).one()


def _datalist(html: str) -> list[str]:
    block = re.search(r'<datalist id="institutions">(.*?)</datalist>', html, re.S)
    assert block, "the form offers no list of institutions"
    return re.findall(r'<option value="([^"]*)"', block.group(1))


def _browser(app, make_user, role: str):  # noqa: ANN001, ANN202
    """A browser of its own, signed in as a new user of `role`."""
    user = make_user(role)
    browser = app.test_client()
    assert post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"}).status_code == 302
    return browser


def _ticked(html: str, node_id: int) -> bool:
    """Whether the node's box is on the page and ticked."""
    box = re.search(rf'<input[^>]*name="nodes"[^>]*value="{node_id}"[^>]*>', html)
    assert box, f"node {node_id} is not offered"
    return " checked" in box.group(0)


# --- Who reaches the pages -------------------------------------------------------------------


@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist"])
def test_only_an_admin_reaches_the_institution_register(client, login_as, role):
    login_as(role)
    assert client.get("/admin/institutions").status_code == 403
    assert client.get("/admin/institutions/new").status_code == 403


def test_the_admin_home_links_the_institution_register(client, login_as):
    login_as("admin")
    html = client.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/institutions"' in html and "Institutions" in html


@pytest.mark.parametrize(("role", "status"), [("analyst", 403), ("am_radiology", 200), ("admin", 200)])
def test_node_settings_are_am_radiology_and_admin_s(client, login_as, role, status):
    node = _node("Leeds PACS")
    login_as(role)
    assert client.get(f"/admin/nodes/{node.id}/edit").status_code == status
    assert client.get(f"/admin/nodes/{node.id}/delete").status_code == status


# --- Institutions: add, search, edit, the nodes that reach them -----------------------------------


def test_an_institution_is_added_with_its_site_contact_and_node_and_audited(client, login_as):
    node = _node("NUH Radiology PACS")
    login_as("admin")
    page = client.get("/admin/institutions/new").get_data(as_text=True)
    assert "NUH Radiology PACS" in page  # offered as a node that reaches it
    answer = post_form(client, "/admin/institutions/new", {
        "name": f"  {NUH} ", "site": "Queen's Medical Centre", "email": "imaging@nuh.nhs.uk", "nodes": str(node.id)})
    assert answer.status_code == 302
    inst = db.session.scalars(sa.select(Institution)).one()
    assert (inst.name, inst.site, inst.email, inst.active) == (NUH, "Queen's Medical Centre", "imaging@nuh.nhs.uk",
                                                                True)
    assert _fresh(DicomNode, node.id).institution_id == inst.id
    [detail] = _audit(Action.INSTITUTION_CHANGED)
    assert detail.startswith(f"institution {inst.id} added: name {NUH}; site Queen's Medical Centre")
    assert "node NUH Radiology PACS reaches it" in detail
    listed = client.get("/admin/institutions").get_data(as_text=True)
    assert NUH in listed and "Queen&#39;s Medical Centre" in listed and "imaging@nuh.nhs.uk" in listed


def test_the_list_is_searched_by_name_site_or_email_and_htmx_gets_the_rows_alone(client, login_as):
    _institution(NUH, site="City Hospital", email="pacs@nuh.nhs.uk")
    _institution("Leeds Teaching Hospitals NHS Trust", site="St James's", email="imaging@leeds.nhs.uk")
    login_as("admin")
    for q in ("nottingham", "CITY", "pacs@nuh"):
        html = client.get("/admin/institutions", query_string={"q": q}).get_data(as_text=True)
        assert NUH in html and "Leeds Teaching" not in html, q
        assert "1 institution matches" in html
    html = client.get("/admin/institutions", query_string={"q": "100%_"}).get_data(as_text=True)
    assert "0 institutions match" in html  # % and _ are searched for, not wildcards
    fragment = client.get("/admin/institutions", query_string={"q": "leeds"}, headers={"HX-Request": "true"})
    body = fragment.get_data(as_text=True)
    assert "<h1>" not in body and 'id="institution-rows"' in body
    assert "Leeds Teaching" in body and "HX-Request" in fragment.headers.get("Vary", "")


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"name": "   "}, "name", "Give the institution&#39;s name in full"),
    ({"name": "x" * 161}, "name", "The name can be at most 160 characters."),
    ({"site": "y" * 121}, "site", "The site can be at most 120 characters."),
    ({"email": "imaging at nuh"}, "email", "Enter a valid e-mail address"),
    ({"name": NUH.upper()}, "name", f"Another institution is already named {NUH}."),
    ({"nodes": "424242"}, "nodes", "Tick nodes from the list"),
], ids=["name_required", "name_over_160", "site_over_120", "email_invalid", "name_taken_in_any_case",
        "node_not_in_the_register"])
def test_bad_input_is_named_kept_and_nothing_is_saved(client, login_as, change, field, message):
    _institution(NUH)
    login_as("admin")
    typed = {"name": "Leeds Teaching Hospitals NHS Trust", "site": "St James's", "email": "imaging@leeds.nhs.uk",
             **change}
    answer = post_form(client, "/admin/institutions/new", typed)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 422
    error = re.search(rf'id="{field}-error">(.*?)</p>', html, re.S)
    assert error and message in error.group(1)
    for key in ("name", "site", "email"):  # everything typed comes back, the wrong value included
        if typed[key].strip():
            assert f'value="{escape(typed[key])}"' in html, key
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Institution)) == 1
    assert _audit(Action.INSTITUTION_CHANGED) == []


def test_editing_renames_and_moves_the_nodes_that_reach_it(client, login_as):
    leeds = _institution("Leeds", email="old@leeds.nhs.uk")
    other = _institution("Sheffield Teaching Hospitals")
    kept = _node("Leeds PACS", institution="Leeds")
    dropped = _node("Leeds Old PACS", institution="Leeds")
    moved = _node("Sheffield PACS", institution="Sheffield Teaching Hospitals")
    login_as("admin")
    page = client.get(f"/admin/institutions/{leeds.id}").get_data(as_text=True)
    assert 'value="Leeds"' in page and 'value="old@leeds.nhs.uk"' in page  # prefilled
    assert _ticked(page, kept.id) and not _ticked(page, moved.id)
    assert "now reaching Sheffield Teaching Hospitals" in page
    answer = post_form(client, f"/admin/institutions/{leeds.id}", {
        "name": "Leeds Teaching Hospitals NHS Trust", "site": "Leeds General Infirmary", "email": "new@leeds.nhs.uk",
        "nodes": [str(kept.id), str(moved.id)]})
    assert answer.status_code == 302
    inst = _fresh(Institution, leeds.id)
    assert (inst.name, inst.site, inst.email) == ("Leeds Teaching Hospitals NHS Trust", "Leeds General Infirmary",
                                                  "new@leeds.nhs.uk")
    reach = {n.name: n.institution_id for n in db.session.scalars(sa.select(DicomNode))}
    assert reach == {"Leeds PACS": leeds.id, "Leeds Old PACS": None, "Sheffield PACS": leeds.id}
    [detail] = _audit(Action.INSTITUTION_CHANGED)
    assert detail.startswith(f"institution {leeds.id} changed: name Leeds -> Leeds Teaching Hospitals NHS Trust; "
                             "site - -> Leeds General Infirmary; email old@leeds.nhs.uk -> new@leeds.nhs.uk")
    assert "node Sheffield PACS reaches it (from Sheffield Teaching Hospitals)" in detail
    assert "node Leeds Old PACS no longer" in detail
    assert _fresh(Institution, other.id) is not None and dropped.id


def test_a_deactivated_node_is_not_offered_but_one_that_reaches_it_stays_ticked(client, login_as):
    inst = _institution("Leeds")
    linked = _node("Leeds PACS", institution="Leeds")
    spare = _node("Spare PACS")
    ours = _node("UHLPACSWFM01", role="local_pacs")
    linked.active = spare.active = False
    db.session.commit()
    login_as("admin")
    page = client.get(f"/admin/institutions/{inst.id}").get_data(as_text=True)
    assert _ticked(page, linked.id) and "Leeds PACS (LEEDS@127.0.0.1:9), deactivated" in page
    assert f'value="{spare.id}"' not in page and f'value="{ours.id}"' not in page  # deactivated; our own PACS
    refused = post_form(client, f"/admin/institutions/{inst.id}", {"name": "Leeds", "nodes": str(spare.id)})
    assert refused.status_code == 422 and "Tick nodes from the list" in refused.get_data(as_text=True)
    assert _fresh(DicomNode, spare.id).institution_id is None


# --- Institutions: deactivate, never delete when referenced ---------------------------------------


def test_a_referenced_institution_is_deactivated_not_deleted_and_its_requests_keep_it(app, make_user,
                                                                                       pas_patients):
    inst = _institution(NUH, site="QMC")
    inst_id = inst.id
    requester = _browser(app, make_user, "requester")
    req = _submit(requester, "/requests/new/import", {**valid_import(), "institution_name": NUH.lower()})
    assert req.institution_id == inst_id  # a registered name, typed in any case, is linked
    admin = _browser(app, make_user, "admin")
    edit = admin.get(f"/admin/institutions/{inst_id}").get_data(as_text=True)
    assert "1 request refers to" in edit and "cannot be deleted" in edit and "Delete " + NUH not in edit
    confirm = admin.get(f"/admin/institutions/{inst_id}/delete").get_data(as_text=True)
    assert "Deactivate it instead" in confirm and 'class="button danger"' not in confirm
    refused = post_form(admin, f"/admin/institutions/{inst_id}/delete", {})
    assert refused.status_code == 409 and _fresh(Institution, inst_id) is not None
    answer = post_form(admin, f"/admin/institutions/{inst_id}/active", {"active": "0"})
    assert answer.status_code == 302
    assert _fresh(Institution, inst_id).active is False
    assert _fresh(Request, req.id).institution_id == inst_id
    assert _audit(Action.INSTITUTION_CHANGED) == [f"institution {inst_id} {NUH} deactivated"]
    assert "Deactivated" in admin.get("/admin/institutions").get_data(as_text=True)
    assert NUH not in _datalist(requester.get("/requests/new/import").get_data(as_text=True))
    shown = requester.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert NUH.lower() in shown  # the request still names it, as typed
    later = _submit(requester, "/requests/new/import", {**valid_import(), "institution_name": NUH,
                                                        "consultant": "Dr Other", "exams-0-exam_code": "CHEAD",
                                                        "exams-0-description": "CT head"})
    assert later.institution_id is None and later.institution_name == NUH  # kept as typed, not linked
    post_form(admin, f"/admin/institutions/{inst_id}/active", {"active": "1"})
    assert _fresh(Institution, inst_id).active is True
    assert _audit(Action.INSTITUTION_CHANGED)[-1] == f"institution {inst_id} {NUH} reactivated"


def test_an_institution_a_node_reaches_is_not_deleted(client, login_as):
    inst = _institution("Leeds")
    _node("Leeds PACS", institution="Leeds")
    login_as("admin")
    refused = post_form(client, f"/admin/institutions/{inst.id}/delete", {})
    assert refused.status_code == 409 and "1 DICOM node refers to Leeds" in refused.get_data(as_text=True)
    assert _fresh(Institution, inst.id) is not None


def test_an_unreferenced_institution_is_deleted_after_confirmation(client, login_as):
    inst_id = _institution("Typo Hospital").id
    login_as("admin")
    confirm = client.get(f"/admin/institutions/{inst_id}/delete").get_data(as_text=True)
    assert "cannot be undone" in confirm and "Delete Typo Hospital</button>" in confirm
    assert _fresh(Institution, inst_id) is not None  # the page asks; only its button deletes
    answer = post_form(client, f"/admin/institutions/{inst_id}/delete", {})
    assert answer.status_code == 302
    assert _fresh(Institution, inst_id) is None
    assert _audit(Action.INSTITUTION_CHANGED) == [f"institution {inst_id} Typo Hospital deleted"]
    assert client.get(f"/admin/institutions/{inst_id}").status_code == 404


def test_a_bad_active_value_is_refused_and_changes_nothing(client, login_as):
    inst = _institution("Leeds")
    login_as("admin")
    assert post_form(client, f"/admin/institutions/{inst.id}/active", {"active": "maybe"}).status_code == 400
    assert _fresh(Institution, inst.id).active is True and _audit(Action.INSTITUTION_CHANGED) == []


# --- The request forms offer the register ---------------------------------------------------------


def test_the_forms_offer_the_active_institutions_with_their_site_and_still_take_free_text(client, login_as,
                                                                                         pas_patients):
    _institution(NUH, site="Queen's Medical Centre")
    _institution("Kettering General Hospital NHS Foundation Trust")
    _institution("Closed Cottage Hospital", active=False)
    login_as("requester")
    for url in ("/requests/new/import", "/requests/new/export"):
        html = client.get(url).get_data(as_text=True)
        assert _datalist(html) == ["Kettering General Hospital NHS Foundation Trust", NUH], url
        assert f'label="{NUH} – Queen&#39;s Medical Centre"' in html
        assert 'list="institutions"' in html  # the field is tied to the list, and stays a text box
    export = _submit(client, "/requests/new/export", valid_export())
    assert export.institution is not None and export.institution.name.startswith("Kettering")
    unknown = _submit(client, "/requests/new/import", {**valid_import(), "institution_name": "Spire Leicester"})
    assert (unknown.institution_id, unknown.institution_name) == (None, "Spire Leicester")


# --- Nodes: edit by id, deactivate, delete ---------------------------------------------------------


def test_a_node_is_edited_by_id_renamed_and_audited(client, login_as):
    _institution("Leeds")
    node = _node("Leeds PACS", institution="Leeds")
    login_as("am_radiology")
    page = client.get(f"/admin/nodes/{node.id}/edit").get_data(as_text=True)
    for value in ('value="Leeds PACS"', 'value="LEEDS"', 'value="127.0.0.1"', 'value="9"', 'value="Leeds"'):
        assert value in page  # prefilled
    assert re.search(r'id="node-supports_get"[^>]* checked', page)
    answer = post_form(client, f"/admin/nodes/{node.id}/edit", {
        "name": "Leeds Radiology PACS", "ae_title": "LEEDSRAD", "host": "10.1.2.3", "port": "11112",
        "role": "remote", "institution": ""})  # C-GET unticked, the institution emptied
    assert answer.status_code == 302
    saved = _fresh(DicomNode, node.id)
    assert (saved.name, saved.ae_title, saved.host, saved.port, saved.supports_get, saved.institution_id) == (
        "Leeds Radiology PACS", "LEEDSRAD", "10.1.2.3", 11112, False, None)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(DicomNode)) == 1
    assert _audit(Action.NODE_CHANGED)[-1] == (
        f"node {node.id} changed: name Leeds PACS -> Leeds Radiology PACS; ae_title LEEDS -> LEEDSRAD; "
        "host 127.0.0.1 -> 10.1.2.3; port 9 -> 11112; c_get True -> False; institution Leeds -> none")


def test_the_add_form_no_longer_updates_an_existing_name_nor_may_an_edit_take_one(client, login_as):
    leeds = _node("Leeds PACS")
    _node("Sheffield PACS")
    login_as("admin")
    added = post_form(client, "/admin/nodes", {"name": "leeds pacs", "ae_title": "OTHER", "host": "10.9.9.9",
                                               "port": "104", "role": "remote", "institution": ""})
    html = added.get_data(as_text=True)
    assert added.status_code == 422
    assert "A node named Leeds PACS is already registered: use its Edit button to change it." in html
    assert 'value="10.9.9.9"' in html  # what was typed is kept
    edited = post_form(client, f"/admin/nodes/{leeds.id}/edit", {"name": "Sheffield PACS", "ae_title": "LEEDS",
                                                                 "host": "127.0.0.1", "port": "104x", "role": "remote"})
    assert edited.status_code == 422 and "The port is a number from 1 to 65535." in edited.get_data(as_text=True)
    edited = post_form(client, f"/admin/nodes/{leeds.id}/edit", {"name": "Sheffield PACS", "ae_title": "LEEDS",
                                                                 "host": "127.0.0.1", "port": "104", "role": "remote"})
    assert edited.status_code == 422
    assert "Another node is already named Sheffield PACS." in edited.get_data(as_text=True)
    assert _fresh(DicomNode, leeds.id).host == "127.0.0.1" and _audit(Action.NODE_CHANGED) == []


def test_the_cli_still_adds_or_updates_a_node_by_name(app, runner):
    for host in ("10.1.1.1", "10.2.2.2"):
        result = runner.invoke(args=["nodes", "add", "--name", "Leeds PACS", "--ae-title", "LEEDS", "--host", host,
                                     "--port", "104", "--institution", "Leeds"])
        assert result.exit_code == 0, result.output
    db.session.expire_all()
    [node] = db.session.scalars(sa.select(DicomNode)).all()
    assert (node.host, node.institution.name) == ("10.2.2.2", "Leeds")


def _export_with_transfer(make_user, pas_patients) -> tuple[Request, DicomNode, DicomNode, Transfer]:  # noqa: ANN001
    pacs = _node("UHLPACSWFM01", role="local_pacs")
    leeds = _node("Leeds PACS")
    patient = pas_patients[0]
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "contact_name": "Dr Shah", "contact_phone": "0116", "contact_email": "shah@uhl-tr.nhs.uk",
               "institution_name": "Leeds", "priority": "Standard", "priority_reason": "Research"}
    req = create_request(RequestValues(kind=Kind.EXPORT, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", ""),)), make_user("requester"))
    db.session.flush()
    transfer = transfers.create_transfer(request=req, direction=Direction.OUTBOUND, priority=Priority.STANDARD,
                                         source=pacs, dest=leeds, study_uids=["1.2.3"], user_id=None, actor="test")
    db.session.commit()
    return req, pacs, leeds, transfer


def test_a_node_transfers_refer_to_is_deactivated_not_deleted_and_no_longer_offered(app, make_user, pas_patients):
    req, _pacs, leeds, transfer = _export_with_transfer(make_user, pas_patients)
    leeds_id = leeds.id
    am = _browser(app, make_user, "am_radiology")
    edit = am.get(f"/admin/nodes/{leeds_id}/edit").get_data(as_text=True)
    assert "1 transfer refers to this node: it cannot be deleted; deactivate it instead." in edit
    refused = post_form(am, f"/admin/nodes/{leeds_id}/delete", {})
    assert refused.status_code == 409 and "it is kept so that they still show where they went" in (
        refused.get_data(as_text=True))
    assert _fresh(DicomNode, leeds_id) is not None
    answer = post_form(am, f"/admin/nodes/{leeds_id}/active", {"active": "0"})
    assert answer.status_code == 302
    assert _fresh(DicomNode, leeds_id).active is False
    assert _audit(Action.NODE_CHANGED) == [f"node {leeds_id} Leeds PACS deactivated"]
    page = am.get("/admin/nodes").get_data(as_text=True)
    assert 'Leeds PACS <span class="badge">Deactivated</span>' in page and ">Reactivate<" in page
    # Not offered, and not taken when posted: the Send is refused with the reason.
    assert "Leeds PACS" not in [n.name for n in transfers_offered()]
    analyst = _browser(app, make_user, "analyst")
    token = csrf_token(analyst, f"/requests/{req.call_ref}")
    sent = analyst.post(f"/requests/{req.call_ref}/transfers", data={
        "csrf_token": token, "study_uid": "1.2.826.0.1.3680043.8.498.999", "dest_id": str(leeds_id),
        "priority": "Standard"}, follow_redirects=True)
    assert "Leeds PACS is deactivated in the node register: choose another node." in sent.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Transfer)) == 1
    # The old transfer still shows where it went.
    assert "Leeds PACS" in analyst.get(f"/transfers/{transfer.id}").get_data(as_text=True)
    post_form(am, f"/admin/nodes/{leeds_id}/active", {"active": "1"})
    assert "Leeds PACS" in [n.name for n in transfers_offered()]
    assert _audit(Action.NODE_CHANGED)[-1] == f"node {leeds_id} Leeds PACS reactivated"


def transfers_offered() -> list[DicomNode]:
    """The destinations an export's Send offers (the search results' list)."""
    db.session.expire_all()
    return _nodes(NodeRole.REMOTE, NodeRole.GATEWAY)


def test_an_unreferenced_node_is_deleted_after_confirmation(client, login_as):
    node_id = _node("Typo PACS").id
    login_as("admin")
    confirm = client.get(f"/admin/nodes/{node_id}/delete").get_data(as_text=True)
    assert "is not used by any transfer. Deleting it cannot be undone." in confirm
    assert post_form(client, f"/admin/nodes/{node_id}/delete", {}).status_code == 302
    assert _fresh(DicomNode, node_id) is None
    assert _audit(Action.NODE_CHANGED) == [f"node {node_id} Typo PACS deleted (TYPO@127.0.0.1:9)"]


def test_deactivating_the_local_pacs_warns_that_imports_cannot_reach_pacs(client, login_as):
    pacs = _node("UHLPACSWFM01", role="local_pacs")
    login_as("admin")
    answer = post_form(client, f"/admin/nodes/{pacs.id}/active", {"active": "0"}, follow_redirects=True)
    assert "imports cannot be downloaded to PACS until one is" in answer.get_data(as_text=True)
