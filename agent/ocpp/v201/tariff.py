"""2.0.1 block I, tariff and cost (central cost calculation): CostUpdated, the tariff and cost
parts of the Authorize and TransactionEvent answers, the TariffCostCtrlr variables.

The CSMS calculates; the station shows (:mod:`agent.core.cost` keeps it, the display shows it):

- I01: the ``personalMessage`` of an AuthorizeResponse's idTokenInfo is the driver's tariff,
  shown before and during charging; ``language1`` / ``language2`` choose the language of the
  station's own texts for that driver.
- I02: the running total of a transaction, from CostUpdated (``totalCost`` of
  ``transactionId``) or the ``totalCost`` of a TransactionEvent answer during it.
- I03: the final total, the ``totalCost`` of the answer to the Ended event, shown after the
  session.
- I04 / I05: TariffFallbackMessage when there is no driver-specific tariff (authorized offline
  or from the cache, or before any card), TotalCostFallbackMessage when no final cost came
  (offline at the end, or the answer had none).
- I06: ``updatedPersonalMessage`` (or the idTokenInfo.personalMessage) of a TransactionEvent
  answer replaces the tariff text during the transaction.

Amounts are in the TariffCostCtrlr.Currency (ISO 4217). The 2.1 local cost calculation
(tariff structures, I07-I12) is not part of 2.0.1. On 2.1 the same block serves: a
TransactionEventResponse may add ``updatedPersonalMessageExtra`` (the tariff text in more
languages), of which the driver's language is shown; a QRCODE text is not shown (the fallback
is), like HTML and URI.

The station's costs (``station.cost``) are built by the first answer or request that carries
a tariff text or a cost: a CSMS that never sends one never has them built.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

from agent.core.model import Token
from agent.core.service_settings import (
    COST_ENABLED,
    COST_FALLBACK,
    COST_SETTINGS,
    CURRENCY,
    SHOWN_FORMATS,
    TARIFF_ENABLED,
    TARIFF_FALLBACK,
    primary,
)
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, b, ro, rw
from agent.storage import OutboxItem

if TYPE_CHECKING:  # the costs are built when a CSMS first speaks of a tariff or a cost
    from agent.core.cost import Tariff

log = logging.getLogger("cp_agent.v201")


def _check_currency(text: str) -> str | None:
    return None if re.fullmatch(r"[A-Z]{3}", text.strip()) else \
        "an ISO 4217 currency code such as EUR"


def tariff_of(content: Any) -> Tariff | None:
    """A MessageContentType as a tariff text (None when there is none)."""
    if not isinstance(content, dict) or not isinstance(content.get("content"), str):
        return None
    from agent.core.cost import Tariff

    return Tariff(content["content"], content.get("language"),
                  str(content.get("format") or "UTF8"))


def tariff_in(main: Any, extra: Any, languages: tuple[str, ...]) -> Tariff | None:
    """The tariff text among ``main`` and its translations (2.1 ``...Extra``, a list of
    MessageContentType) in the first of the driver's ``languages`` that it has, else the
    main one (None when there is no text at all)."""
    first = tariff_of(main)
    if first is None:
        return None
    others = [t for t in (tariff_of(x) for x in extra) if t is not None] \
        if isinstance(extra, list) else []
    wanted = [primary(lang) for lang in languages]
    for lang in wanted:
        for t in [first, *others]:
            if lang and primary(t.language) == lang and t.format in SHOWN_FORMATS:
                return t
    return first


def languages_of(info: Any) -> tuple[str, ...]:
    if not isinstance(info, dict):
        return ()
    return tuple(str(info[k]) for k in ("language1", "language2") if info.get(k))


class TariffCost(VariableBlock):
    SETTINGS = COST_SETTINGS
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("TariffCostCtrlr", "Enabled", "boolean", instance="Tariff", setting=TARIFF_ENABLED),
        rw("TariffCostCtrlr", "Enabled", "boolean", instance="Cost", setting=COST_ENABLED),
        ro("TariffCostCtrlr", "Available", "boolean", "true", instance="Tariff"),
        ro("TariffCostCtrlr", "Available", "boolean", "true", instance="Cost"),
        ro("TariffCostCtrlr", "Available", "boolean", "true"),
        rw("TariffCostCtrlr", "TariffFallbackMessage", "string", max_limit=255,
           setting=TARIFF_FALLBACK),
        rw("TariffCostCtrlr", "TotalCostFallbackMessage", "string", max_limit=255,
           setting=COST_FALLBACK),
        rw("TariffCostCtrlr", "Currency", "string", max_limit=3, check=_check_currency,
           setting=CURRENCY),
    )

    def live_variables(self) -> list[VarDef]:
        # Enabled without an instance: tariff or cost shown at all (the two instances say which).
        return [ro("TariffCostCtrlr", "Enabled", "boolean", lambda: b(
            bool(self.settings[TARIFF_ENABLED]) or bool(self.settings[COST_ENABLED])))]

    def _costs(self, *, build: bool = True) -> Any:
        """The station's costs; ``build=False``: only if they exist already."""
        if not build:
            return self.built_service("cost")
        return getattr(self.station, "cost", None)

    # ------------------------------------------------------------------ I01

    def authorize_answered(self, token: Token, answer: dict) -> None:
        """An AuthorizeResponse: the driver's tariff text and languages (I01)."""
        info = answer.get("idTokenInfo")
        if not isinstance(info, dict):
            return
        tariff, languages = tariff_of(info.get("personalMessage")), languages_of(info)
        # Nothing to tell costs that do not exist yet (they would forget nothing).
        costs = self._costs(build=tariff is not None or bool(languages))
        if costs is not None:
            costs.driver(token.id, tariff, languages)

    # ------------------------------------------------------------------ I02, I03, I06

    def transaction_answered(self, item: OutboxItem, result: dict) -> None:
        """A TransactionEventResponse (runs inside the commit that acknowledges the event,
        so it must not raise: the event would be sent again)."""
        if item.tx_ref is None:
            return
        info = result.get("idTokenInfo")
        says = "totalCost" in result or result.get("updatedPersonalMessage") is not None or (
            isinstance(info, dict) and info.get("personalMessage") is not None)
        # An answer without a tariff or a cost does not build the costs (a transaction they
        # do not know yet is adopted when they are built).
        costs = self._costs(build=says)
        if costs is None:
            return
        try:
            self._take(costs, item, result)
        except Exception:  # noqa: BLE001 - the cost is never worth a resent event
            log.exception("transaction %s: cost or tariff of the answer not taken",
                          item.tx_ref)

    def _take(self, costs: Any, item: OutboxItem, result: dict) -> None:
        from agent.core.cost import CostError

        local_id = item.tx_ref
        assert local_id is not None
        evse = item.payload.get("evse")
        evse_id = int(evse["id"]) if isinstance(evse, dict) and "id" in evse else 0
        info = result.get("idTokenInfo")
        known = costs.of(local_id)
        languages = languages_of(info) or (known.languages if known is not None else ())
        tariff = tariff_in(result.get("updatedPersonalMessage"),
                           result.get("updatedPersonalMessageExtra"), languages) or (
            tariff_of(info.get("personalMessage")) if isinstance(info, dict) else None)
        if tariff is not None:
            costs.tariff_update(local_id, evse_id, tariff, languages_of(info))
        if "totalCost" in result:
            final = item.payload.get("eventType") == "Ended"
            try:
                costs.update(local_id, evse_id, result["totalCost"], final=final)
            except CostError as exc:
                log.warning("transaction %s: totalCost %s", local_id, exc)

    @handles("CostUpdated")
    async def cost_updated(self, p: dict) -> dict:
        """I02: the running total of a transaction; answered (empty) whatever it names."""
        from agent.core.cost import CostError

        costs = self._costs()
        local_id = str(p["transactionId"])
        evse = self.station.find_tx(local_id=local_id)
        known = costs.of(local_id) if costs is not None else None
        if costs is None:
            return {}
        if evse is None and known is None:
            log.warning("CostUpdated for transaction %s, which this station does not know",
                        local_id)
            return {}
        try:
            costs.update(local_id, evse.id if evse is not None else known.evse_id,
                         p["totalCost"])
        except CostError as exc:
            log.warning("CostUpdated for transaction %s: %s", local_id, exc)
        return {}
