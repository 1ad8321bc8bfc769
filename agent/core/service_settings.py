"""The settings and names of the core services built on first use: reservations, the display's
message board and the costs.

The protocol blocks declare these settings and device-model variables when an adapter is
composed, long before (and mostly without) anyone using the services; importing the services
for a handful of names would load them on every station (docs/performance.md, issue 18). So
the names live here, and the services import them from here (tests keep the two equal where
a service keeps its own copy).
"""

from __future__ import annotations

from typing import Any

from agent.core.settings import SettingDef

# ---------------------------------------------------------------------- reservations

RESERVATION_PROFILE = "Reservation"  # the 1.6 feature profile
# ReserveConnectorZeroSupported is the 1.6 key (9.3.1, read-only to a CSMS; an installer may
# set it in ocpp.defaults), shown by 2.0.1 as ReservationCtrlr.NonEvseSpecific.
# ReservationEnabled is 2.0.1's ReservationCtrlr.Enabled; 1.6 has no key for it ("configured
# not to accept reservations": an installer's ocpp.defaults).
RESERVATION_SETTINGS: tuple[SettingDef, ...] = (
    SettingDef("ReserveConnectorZeroSupported", "bool", True, readonly=True,
               profile=RESERVATION_PROFILE),
    SettingDef("ReservationEnabled", "bool", True, v16=False),
)

# ---------------------------------------------------------------------- display messages

PRIORITIES = ("AlwaysFront", "InFront", "NormalCycle")
MESSAGE_STATES = ("Charging", "Faulted", "Idle", "Unavailable")
SHOWN_FORMATS = ("ASCII", "UTF8")  # what a character display can show as text
# Messages the station keeps (2.0.1 DisplayMessageCtrlr.DisplayMessages maxLimit).
MESSAGE_CAPACITY = 32
# The station's default language (2.0.1 DisplayMessageCtrlr.Language maps onto it) and the
# languages its own texts are written in (agent.core.display.TEXTS).
DISPLAY_LANGUAGE = "DisplayLanguage"
DISPLAY_LANGUAGES = ("de", "en", "fr", "nl")
DISPLAY_SETTINGS: tuple[SettingDef, ...] = (
    SettingDef(DISPLAY_LANGUAGE, "str", "en", v16=False),
)


def primary(language: str | None) -> str | None:
    """``de-AT`` -> ``de``: what the station's catalogue and the matching of messages use."""
    if not language:
        return None
    return language.split("-")[0].split("_")[0].strip().lower() or None


# ---------------------------------------------------------------------- tariff and cost

# The neutral settings of tariff and cost (2.0.1 TariffCostCtrlr maps its variables onto them).
TARIFF_ENABLED = "TariffEnabled"
COST_ENABLED = "TotalCostEnabled"
TARIFF_FALLBACK = "TariffFallbackMessage"
COST_FALLBACK = "TotalCostFallbackMessage"
CURRENCY = "Currency"
COST_SETTINGS: tuple[SettingDef, ...] = (
    SettingDef(TARIFF_ENABLED, "bool", True, v16=False),
    SettingDef(COST_ENABLED, "bool", True, v16=False),
    SettingDef(TARIFF_FALLBACK, "str", "", v16=False),
    SettingDef(COST_FALLBACK, "str", "", v16=False),
    SettingDef(CURRENCY, "str", "EUR", v16=False),
)


def cost_setting(settings: Any, name: str) -> Any:
    """A tariff / cost setting, or its default where no version declared it (1.6 alone)."""
    default = next(d.default for d in COST_SETTINGS if d.name == name)
    return settings.get(name, default)


def costs_supported(settings: Any) -> bool:
    """Whether a version that speaks of tariffs and costs is configured (2.0.1 registers
    their settings); 1.6 alone never gets a cost, so the display does not wait for one."""
    return CURRENCY in settings


def tariff_enabled(settings: Any) -> bool:
    return costs_supported(settings) and bool(cost_setting(settings, TARIFF_ENABLED))


def cost_enabled(settings: Any) -> bool:
    return costs_supported(settings) and bool(cost_setting(settings, COST_ENABLED))
