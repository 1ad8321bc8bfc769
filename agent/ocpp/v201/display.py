"""2.0.1 block O, display messages: SetDisplayMessage, GetDisplayMessages (answered with
NotifyDisplayMessages), ClearDisplayMessage and the DisplayMessageCtrlr variables.

The messages themselves, their persistence and what is shown when (priority, state, time
window, the transaction they belong to, language) are the core's
(:mod:`agent.core.display`); this block checks a request against what the station's display
can do and answers the 2.0.1 way:

- O01 / O06: a message is stored, or replaces the one with its id. A format the display
  cannot show as text (HTML, URI) is NotSupportedMessageFormat, a priority or state not in
  SupportedPriorities / SupportedStates NotSupportedPriority / NotSupportedState; a station
  without a display, with DisplayMessageCtrlr.Enabled false or with every place taken
  (DisplayMessages maxLimit) answers Rejected with the reason code. A text longer than the
  screen is accepted: it is shown as consecutive pages.
- O02: a message bound to a transaction needs that transaction to be running
  (UnknownTransaction otherwise) and is removed when it ends.
- O03 / O04: GetDisplayMessages answers Accepted and reports the matching messages (by id,
  priority, state) in NotifyDisplayMessages parts (``tbc``), or Unknown when none matches.
- O05: ClearDisplayMessage answers Accepted, or Unknown for an id the station does not have.

The message board is built by the first SetDisplayMessage (or at start-up when the state file
holds a message): until then Get and Clear find nothing without building it.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.service_settings import (
    DISPLAY_LANGUAGE,
    DISPLAY_LANGUAGES,
    DISPLAY_SETTINGS,
    MESSAGE_STATES,
    PRIORITIES,
    SHOWN_FORMATS,
)
from agent.link.rpc import CallFailed
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, b, ro, rw
from agent.storage import StorageError

log = logging.getLogger("cp_agent.v201")

FORMATS = ("ASCII", "HTML", "URI", "UTF8")
# MessageInfo entries per NotifyDisplayMessages part (512 characters of content each).
NOTIFY_ITEMS = 8
# Characters of an idTokenInfo.personalMessage the station keeps and shows (as pages).
PERSONAL_MESSAGE_SIZE = 512
# MessageContentType.content in 2.0.1 (2.1 allows 1024).
CONTENT_MAX = 512


def _refused(status: str, reason: str | None = None, info: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"status": status}
    if reason is not None:
        out["statusInfo"] = {"reasonCode": reason}
        if info:
            out["statusInfo"]["additionalInfo"] = info[:512]
    return out


class DisplayMessages(VariableBlock):
    SETTINGS = DISPLAY_SETTINGS
    # ClearDisplayMessage when the message could not be removed (2.1 has Rejected for it).
    CLEAR_FAILED = "Unknown"
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("DisplayMessageCtrlr", "Enabled", "boolean", "true"),
        ro("DisplayMessageCtrlr", "SupportedFormats", "MemberList", ",".join(SHOWN_FORMATS),
           values_list=FORMATS),
        ro("DisplayMessageCtrlr", "SupportedPriorities", "MemberList", ",".join(PRIORITIES),
           values_list=PRIORITIES),
        ro("DisplayMessageCtrlr", "SupportedStates", "MemberList", ",".join(MESSAGE_STATES),
           values_list=MESSAGE_STATES),
        ro("DisplayMessageCtrlr", "PersonalMessageSize", "integer",
           str(PERSONAL_MESSAGE_SIZE)),
        rw("DisplayMessageCtrlr", "Language", "OptionList", values_list=DISPLAY_LANGUAGES,
           setting=DISPLAY_LANGUAGE),
    )

    def _service(self) -> Any:
        return getattr(self.station, "display", None)

    def _has_display(self) -> bool:
        service = self._service()
        return service is not None and service.screen is not None

    def live_variables(self) -> list[VarDef]:
        service = self._service()
        capacity = service.capacity if service is not None else 0
        return [
            ro("DisplayMessageCtrlr", "Available", "boolean", lambda: b(self._has_display())),
            ro("DisplayMessageCtrlr", "DisplayMessages", "integer",
               lambda: str(s.message_count()) if (s := self._service()) is not None else "0",
               max_limit=capacity),
        ]

    def start(self) -> None:
        service = self._service()
        if service is not None:
            service.messages_enabled = self._enabled

    def _enabled(self) -> bool:
        return self.dm.flag("DisplayMessageCtrlr", "Enabled")

    # ------------------------------------------------------------------ O01, O02, O06

    @handles("SetDisplayMessage")
    async def set_display_message(self, p: dict) -> dict:
        info = p["message"]
        service = self._service()
        if service is None or service.screen is None:
            return _refused("Rejected", "UnsupportedRequest", "this station has no display")
        if not self._enabled():
            return _refused("Rejected", "NotEnabled", "DisplayMessageCtrlr.Enabled is false")
        if info["priority"] not in self.dm.members("DisplayMessageCtrlr", "SupportedPriorities"):
            return _refused("NotSupportedPriority")
        state = info.get("state")
        if state is not None and state not in self.dm.members("DisplayMessageCtrlr",
                                                                "SupportedStates"):
            return _refused("NotSupportedState")
        if info["message"]["format"] not in self.dm.members("DisplayMessageCtrlr",
                                                            "SupportedFormats"):
            return _refused("NotSupportedMessageFormat", "UnsupportedParam",
                            f"a character display shows {', '.join(SHOWN_FORMATS)} text")
        tx = info.get("transactionId")
        if tx is not None and self.station.find_tx(local_id=tx) is None:
            return _refused("UnknownTransaction", "TxNotFound",
                            f"no transaction {tx} is running")
        from agent.core.display_messages import MessageError

        try:
            message = service.board.put(info)  # the first message builds the board
        except MessageError as exc:
            return _refused("Rejected", exc.reason, str(exc))
        except StorageError as exc:
            log.error("display message %s not saved: %s", info["id"], exc)
            return _refused("Rejected", "InternalError", "the message could not be saved")
        if message.end is not None and message.end <= self.clock.now():
            log.info("display message %s ends before it could be shown", message.id)
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ O03, O04

    @handles("GetDisplayMessages")
    async def get_display_messages(self, p: dict) -> dict:
        service = self._service()
        if service is None or not service.message_count():  # none kept (or no board yet)
            return _refused("Unknown", "NotFound")
        service.board.purge(self.clock.now(), {e.tx.local_id for e in self.station.evses.values()
                                               if e.tx is not None})
        ids = p.get("id")
        found = [m for m in service.board.all()
                 if (ids is None or m.id in ids)
                 and (p.get("priority") is None or m.priority == p["priority"])
                 and (p.get("state") is None or m.state == p["state"])]
        if not found:
            return _refused("Unknown", "NotFound")
        self.adapter.spawn(self._notify(p["requestId"], [self.reported(m.info) for m in found]),
                           "v201-display-messages")
        return {"status": "Accepted"}

    def reported(self, info: dict[str, Any]) -> dict[str, Any]:
        """A stored MessageInfo as this version may report it: one set over 2.1 loses what
        2.0.1 has not (messageExtra, content beyond 512 characters)."""
        out = {k: v for k, v in info.items() if k != "messageExtra"}
        content = out.get("message")
        if isinstance(content, dict) and len(str(content.get("content", ""))) > CONTENT_MAX:
            out["message"] = {**content, "content": str(content["content"])[:CONTENT_MAX]}
        return out

    async def _notify(self, request_id: int, infos: list[dict]) -> None:
        await self.adapter.after_answer()
        parts = [infos[i:i + NOTIFY_ITEMS] for i in range(0, len(infos), NOTIFY_ITEMS)]
        for n, part in enumerate(parts):
            payload: dict[str, Any] = {"requestId": request_id, "messageInfo": part}
            if n < len(parts) - 1:
                payload["tbc"] = True
            try:
                await self.adapter.call("NotifyDisplayMessages", payload)
            except CallFailed as exc:
                log.warning("display messages of request %s stopped at part %d: %s",
                            request_id, n, exc)
                return

    # ------------------------------------------------------------------ O05

    @handles("ClearDisplayMessage")
    async def clear_display_message(self, p: dict) -> dict:
        service = self._service()
        if service is None or not service.message_count() or p["id"] not in service.board:
            return {"status": "Unknown"}
        try:
            service.board.remove([p["id"]])
        except StorageError as exc:
            log.error("display message %s not removed: %s", p["id"], exc)
            return _refused(self.CLEAR_FAILED, "InternalError",
                            "the message could not be removed")
        return {"status": "Accepted"}
