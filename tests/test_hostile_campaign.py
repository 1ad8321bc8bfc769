"""The hostile-frames campaign's own bookkeeping and judgement (tests/soak/hostile_frames.py),
where its 100,000-frame run found it wrong: its CSMS kept every answer nobody waited for, and
it failed answers that the version gives no way to refuse."""

from __future__ import annotations

import json

from tests.soak.hostile_frames import Frame, FuzzCsms, Tally, _judge


async def test_campaign_csms_does_not_keep_answers_nobody_waits_for() -> None:
    """The CALLERRORs to unreadable ids (1 in 4 hostile frames) were kept for ever."""
    csms = FuzzCsms(port=0)
    for _ in range(100):
        await csms._frame(None, '[4,"-1","RpcFrameworkError","Message is not valid JSON",{}]')
    assert csms.replies == {} and csms.unmatched["4"] == 100


def _malformed_date_call(action: str, payload: dict) -> Frame:
    return Frame("schema-valid CALL", json.dumps([2, "h1", action, payload]), "h1", action,
                 valid=False, known=True, payload=payload)  # only the date-time is malformed


def test_a_response_without_status_is_no_failure_to_refuse() -> None:
    """1.6 UpdateFirmware.conf is empty: its CALLRESULT cannot say Rejected."""
    tally = Tally("1.6")
    frame = _malformed_date_call("UpdateFirmware", {"location": "https://a.example",
                                                    "retrieveDate": ""})
    _judge("1.6", frame, [3, "h1", {}], FuzzCsms(port=0), tally)
    assert tally.problems == []
    assert tally.answers["CALLRESULT (no status in its schema) to a CALL with a malformed "
                         "date-time"] == 1


def test_a_response_with_status_must_refuse_a_malformed_date() -> None:
    tally = Tally("1.6")
    frame = _malformed_date_call("ReserveNow", {"connectorId": 1, "expiryDate": "xxx",
                                                "idTag": "OK1", "reservationId": 1})
    _judge("1.6", frame, [3, "h1", {"status": "Accepted"}], FuzzCsms(port=0), tally)
    assert len(tally.problems) == 1 and "malformed date-time answered Accepted" in \
        tally.problems[0]
