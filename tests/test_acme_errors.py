"""Problem documents (RFC 8555 section 6.7) in words: the text administrators read."""

from __future__ import annotations

import datetime as dt

from ssa_admin.acme.errors import explain, explain_challenge

P = "urn:ietf:params:acme:error:"


def test_rate_limited_says_when_to_retry() -> None:
    when = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)
    text = explain({"type": P + "rateLimited", "detail": "too many certificates"},
                   "placing the order", when)
    assert text.splitlines()[0] == "placing the order: rateLimited: too many certificates"
    assert "rate limit" in text and "try again after 2026-12-01 10:30:00 UTC" in text


def test_subproblems_name_each_identifier() -> None:
    text = explain({"type": P + "rejectedIdentifier", "detail": "2 names refused",
                    "subproblems": [
                        {"type": P + "rejectedIdentifier", "detail": "public suffix",
                         "identifier": {"type": "dns", "value": "co.uk"}},
                        {"type": P + "caa", "detail": "CAA forbids",
                         "identifier": {"type": "dns", "value": "shop.example"}}]})
    lines = text.splitlines()
    assert "  co.uk: rejectedIdentifier: public suffix" in lines
    assert "  shop.example: caa: CAA forbids" in lines
    assert any("CAA record" in line for line in lines)  # advice for the sub-problem's kind


def test_failed_challenge_shows_what_the_ca_saw() -> None:
    text = explain_challenge({
        "type": "http-01", "url": "https://ca.example/chall/1", "status": "invalid",
        "error": {"type": P + "unauthorized", "detail": "Invalid response: 404"},
        "validationRecord": [{"url": "http://shop.example/.well-known/acme-challenge/x",
                              "hostname": "shop.example", "port": "80",
                              "addressesResolved": ["192.0.2.7"], "addressUsed": "192.0.2.7"}],
    }, "shop.example")
    assert text.startswith("shop.example: http-01 failed: unauthorized: Invalid response: 404")
    assert "challenge: https://ca.example/chall/1" in text
    assert "fetched http://shop.example/.well-known/acme-challenge/x" in text
    assert "connected to 192.0.2.7" in text


def test_unknown_problem_type_is_still_readable() -> None:
    assert explain({"type": "about:blank", "detail": "odd"}) == "about:blank: odd"
    assert explain({}) == "error"


def test_a_deactivated_account_is_not_a_failed_proof() -> None:
    text = explain({"type": P + "unauthorized", "detail": "Account has been deactivated"})
    assert "account register" in text and "proof of control" not in text
