"""Tariff and cost as the CSMS tells them, kept for the driver's display.

The CSMS calculates what a session costs (OCPP's central cost calculation); the station only
shows what it is told: a tariff text for the driver before and during charging (2.0.1 the
``personalMessage`` of an authorization answer, ``updatedPersonalMessage`` during the
transaction), the running total (CostUpdated, or a transaction answer's ``totalCost``) and
the final total after the session (the answer to its last transaction message). When nothing
driver-specific is known the operator's fallback texts are shown instead (TariffFallbackMessage,
TotalCostFallbackMessage). The protocol blocks hand what they read to :class:`Costs`; the
display (:mod:`agent.core.display`) reads it.

Amounts are :class:`decimal.Decimal` from the first moment: a JSON number is turned into one
from its shortest decimal spelling, so 3.31 stays 3.31 and is never shown as 3.3099999. They
are shown rounded to the currency's minor unit (ISO 4217), half up, with the currency code.

Costs are kept per transaction (``tx_costs``), across restarts, so the total of a session that
ended just before a power cut is still there for the driver.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from agent.clock import Clock
from agent.core import service_settings as names
from agent.core.service_settings import COST_FALLBACK, CURRENCY, TARIFF_FALLBACK
from agent.core.settings import Settings
from agent.storage import Storage, StorageError

log = logging.getLogger("cp_agent.cost")

# The neutral settings of tariff and cost (COST_SETTINGS: TariffEnabled, TotalCostEnabled, the
# fallback texts, Currency) live in agent/core/service_settings.py: the blocks declare them
# without loading this module (the costs are built on first use).
# ISO 4217 currencies whose minor unit is not the cent (digits after the decimal point).
MINOR_UNITS = {"BHD": 3, "BIF": 0, "CLF": 4, "CLP": 0, "DJF": 0, "GNF": 0, "IQD": 3,
               "ISK": 0, "JOD": 3, "JPY": 0, "KMF": 0, "KRW": 0, "KWD": 3, "LYD": 3,
               "OMR": 3, "PYG": 0, "RWF": 0, "TND": 3, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0,
               "XAF": 0, "XOF": 0, "XPF": 0}
# Token verdicts (tariff texts, languages) remembered until their transaction starts.
TOKENS_KEPT = 32


class CostError(ValueError):
    """A cost that is not an amount (a string, NaN, a boolean)."""


def to_decimal(value: Any) -> Decimal:
    """A CSMS's number as an exact decimal (floats by their shortest spelling)."""
    if isinstance(value, bool):
        raise CostError(f"{value!r} is not an amount")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CostError(f"{value!r} is not an amount")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise CostError(f"{value!r} is not an amount") from None
    else:
        raise CostError(f"{value!r} is not an amount")
    if not result.is_finite():
        raise CostError(f"{value!r} is not an amount")
    return result


def format_amount(amount: Decimal, currency: str) -> str:
    """``3.31 EUR``: rounded half up to the currency's minor unit, never in exponent form."""
    digits = MINOR_UNITS.get(currency.upper(), 2)
    rounded = amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    text = format(rounded, "f")
    if text.startswith("-") and rounded == 0:
        text = text[1:]
    return f"{text} {currency}".strip()


@dataclass(frozen=True)
class Tariff:
    """A text the CSMS has for the driver (a tariff, a greeting, a price per kWh)."""

    text: str
    language: str | None = None
    format: str = "UTF8"

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "language": self.language, "format": self.format}

    @classmethod
    def from_dict(cls, data: Any) -> Tariff | None:
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            return None
        return cls(data["text"], data.get("language"), str(data.get("format") or "UTF8"))


@dataclass(frozen=True)
class TxCost:
    """What is known of one transaction's cost."""

    local_id: str
    evse_id: int
    token: str | None = None
    total: Decimal | None = None
    final: bool = False
    tariff: Tariff | None = None
    languages: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"token": self.token, "total": None if self.total is None else str(self.total),
                "final": self.final,
                "tariff": self.tariff.as_dict() if self.tariff else None,
                "languages": list(self.languages)}

    @classmethod
    def from_row(cls, local_id: str, evse_id: int, data: dict[str, Any]) -> TxCost:
        total = None
        if data.get("total") is not None:
            try:
                total = to_decimal(str(data["total"]))
            except CostError:
                log.warning("transaction %s: stored cost %r ignored", local_id, data["total"])
        langs = data.get("languages")
        return cls(local_id, evse_id, data.get("token"), total, bool(data.get("final")),
                   Tariff.from_dict(data.get("tariff")),
                   tuple(str(x) for x in langs) if isinstance(langs, list) else ())


class Costs:
    """Tariff texts per driver, cost per transaction; both read by the display."""

    def __init__(self, storage: Storage, clock: Clock, settings: Settings) -> None:
        self._storage = storage
        self._clock = clock
        self._settings = settings
        self._tokens: dict[str, tuple[Tariff | None, tuple[str, ...]]] = {}
        self._tx: dict[str, TxCost] = {}
        self.listeners: list[Callable[[], None]] = []  # the display redraws
        try:
            for local_id, evse_id, data in storage.tx_costs_all():
                self._tx[local_id] = TxCost.from_row(local_id, evse_id, data)
        except StorageError as exc:
            log.error("transaction costs not read: %s", exc)

    # ------------------------------------------------------------------ settings

    def _setting(self, name: str) -> Any:
        return names.cost_setting(self._settings, name)

    @property
    def supported(self) -> bool:
        """Whether a version that speaks of tariffs and costs is configured (2.0.1 registers
        their settings); 1.6 alone never gets a cost, so the display does not wait for one."""
        return names.costs_supported(self._settings)

    @property
    def currency(self) -> str:
        return str(self._setting(CURRENCY) or "").strip().upper()

    @property
    def tariff_enabled(self) -> bool:
        return names.tariff_enabled(self._settings)

    @property
    def cost_enabled(self) -> bool:
        return names.cost_enabled(self._settings)

    @property
    def tariff_fallback(self) -> str:
        return str(self._setting(TARIFF_FALLBACK) or "")

    @property
    def cost_fallback(self) -> str:
        return str(self._setting(COST_FALLBACK) or "")

    def format(self, amount: Decimal) -> str:
        return format_amount(amount, self.currency)

    # ------------------------------------------------------------------ what the CSMS says

    def driver(self, token_id: str, tariff: Tariff | None,
               languages: tuple[str, ...] = ()) -> None:
        """The CSMS answered an authorization of ``token_id`` (its tariff text and the
        driver's languages, either may be absent); a running transaction of that token
        takes them over."""
        self._tokens.pop(token_id, None)
        self._tokens[token_id] = (tariff, languages)
        while len(self._tokens) > TOKENS_KEPT:
            del self._tokens[next(iter(self._tokens))]
        for cost in list(self._tx.values()):
            if cost.token == token_id and not cost.final and tariff is not None:
                self._save(replace(cost, tariff=tariff, languages=languages or cost.languages))
        self._changed()

    def driver_info(self, token_id: str | None) -> tuple[Tariff | None, tuple[str, ...]]:
        if token_id is None:
            return None, ()
        return self._tokens.get(token_id, (None, ()))

    def started(self, local_id: str, evse_id: int, token_id: str | None) -> TxCost:
        """A transaction began: it carries its driver's tariff and languages from now on."""
        cost = self._tx.get(local_id)
        if cost is None:
            tariff, languages = self.driver_info(token_id)
            cost = self._save(TxCost(local_id, evse_id, token_id, tariff=tariff,
                                     languages=languages))
        return cost

    def update(self, local_id: str, evse_id: int, total: Any, *, final: bool = False) -> TxCost:
        """The CSMS's total for a transaction (running, or ``final`` after its end); raises
        :class:`CostError` for a value that is no amount. A final total is not overwritten
        by a late running one."""
        amount = to_decimal(total)
        cost = self._tx.get(local_id) or TxCost(local_id, evse_id)
        if cost.final and not final:
            log.info("transaction %s: running cost %s after the final one ignored", local_id,
                     amount)
            return cost
        cost = self._save(replace(cost, total=amount, final=final or cost.final))
        log.info("transaction %s: %s cost %s", local_id, "final" if final else "running",
                 self.format(amount))
        self._changed()
        return cost

    def tariff_update(self, local_id: str, evse_id: int, tariff: Tariff,
                      languages: tuple[str, ...] = ()) -> TxCost:
        """A new tariff text during the transaction (2.0.1 I06 updatedPersonalMessage)."""
        cost = self._tx.get(local_id) or TxCost(local_id, evse_id)
        cost = self._save(replace(cost, tariff=tariff, languages=languages or cost.languages))
        self._changed()
        return cost

    def of(self, local_id: str | None) -> TxCost | None:
        return self._tx.get(local_id) if local_id else None

    def _save(self, cost: TxCost) -> TxCost:
        self._tx.pop(cost.local_id, None)
        self._tx[cost.local_id] = cost
        while len(self._tx) > 64:
            del self._tx[next(iter(self._tx))]
        try:
            self._storage.tx_cost_put(cost.local_id, cost.evse_id, cost.as_dict())
        except StorageError as exc:  # the display shows it all the same; a restart forgets it
            log.error("transaction %s: cost not saved: %s", cost.local_id, exc)
        return cost

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - a display is never worth a failed answer
                log.exception("cost listener failed")
