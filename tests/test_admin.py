"""The admin home (issue 14.8): only admins reach it, and it links every part that exists."""

from __future__ import annotations

import pytest

from app.admin import SECTIONS
from tests.conftest import post_form


def test_the_admin_home_links_each_section(client, login_as):
    login_as("admin")
    page = client.get("/admin/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<h1>Administration</h1>" in html
    shown = [s for s in SECTIONS if s.endpoint in client.application.view_functions]
    assert shown, "the node register at least"
    for section in shown:
        assert section.title in html


@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist"])
def test_only_an_admin_reaches_the_admin_home(client, login_as, role):
    login_as(role)
    assert client.get("/admin/").status_code == 403


def test_an_admin_signs_in_to_the_admin_home(client, make_user):
    user = make_user("admin")
    answer = post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/")
