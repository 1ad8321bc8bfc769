"""2.1 block O, display messages: the 2.0.1 block with what 2.1 changed in its messages.

- MessageInfo may carry ``messageExtra``: the same message in up to four more languages. The
  core keeps them with the message (:class:`agent.core.display.DisplayMessage`) and shows the
  text in the driver's language, else the station's, else the main one; GetDisplayMessages
  reports them back as they were set.
- New message format QRCODE and states Suspended and Discharging: a character display can
  show neither a QR code nor tell those states apart from Charging, so they stay out of
  SupportedFormats / SupportedStates (whose valuesList now names them) and are answered
  NotSupportedMessageFormat / NotSupportedState like HTML and URI.
- ClearDisplayMessage has a Rejected status: it answers a message that is there but could not
  be removed (the state file refused), where 2.0.1 can only say Unknown.
- ``content`` may be 1024 characters long; a longer text is shown as more pages.

Not used: LanguageNotSupported. The station shows a CSMS's text in whatever language it is
written (the display shows characters, not a language); only its own texts are limited to
the languages of DisplayMessageCtrlr.Language.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from agent.core.service_settings import MESSAGE_STATES
from agent.ocpp.v201.device_model import VarDef
from agent.ocpp.v201.display import FORMATS, DisplayMessages

FORMATS_21 = (*FORMATS, "QRCODE")
STATES_21 = (*MESSAGE_STATES, "Suspended", "Discharging")
_VALUES_21 = {"SupportedFormats": FORMATS_21, "SupportedStates": STATES_21}


def _widened(d: VarDef) -> VarDef:
    """2.1's valuesList for the DisplayMessageCtrlr lists whose enumerations grew."""
    if d.component == "DisplayMessageCtrlr" and d.name in _VALUES_21:
        return replace(d, values_list=_VALUES_21[d.name])
    return d


class DisplayMessages21(DisplayMessages):
    CLEAR_FAILED = "Rejected"
    VARIABLES: ClassVar[tuple[VarDef, ...]] = tuple(
        _widened(d) for d in DisplayMessages.VARIABLES)

    def reported(self, info: dict[str, Any]) -> dict[str, Any]:
        return info  # 2.1 takes back everything it could set
