"""The 1.6 view of the settings store: configuration keys (1.6 chapter 9).

1.6 knows settings as flat keys.  The store (:mod:`agent.core.settings`) holds every setting
once; this view shows the ones flagged ``v16`` under their names for GetConfiguration and
ChangeConfiguration.  Key names are CiString in 1.6, so they are matched without regard to
case (``ConnectionTimeout`` finds ConnectionTimeOut), and answered with their own spelling.
"""

from __future__ import annotations

from typing import Any

from agent.core.settings import SettingDef, Settings

MAX_VALUE = 500  # ConfigurationKey.value is CiString500
MAX_KEY = 50  # unknownKey entries are CiString50


class ConfigurationView:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _defs(self) -> dict[str, SettingDef]:
        return {d.name.lower(): d for d, _ in self.settings.items() if d.v16}

    def find(self, name: str) -> SettingDef | None:
        return self._defs().get(name.lower())

    def get_configuration(self, wanted: list[str] | None) -> dict[str, Any]:
        defs = self._defs()
        known, unknown = [], []
        chosen = [defs.get(n.lower()) for n in wanted] if wanted else list(defs.values())
        for name, d in zip(wanted or [d.name for d in chosen], chosen, strict=True):
            if d is None:
                unknown.append(name[:MAX_KEY])
                continue
            entry: dict[str, Any] = {"key": d.name, "readonly": d.readonly}
            if not d.secret:  # a write-only key is listed without its value
                entry["value"] = d.format(self.settings[d.name])[:MAX_VALUE]
            known.append(entry)
        out: dict[str, Any] = {}
        if known:
            out["configurationKey"] = known
        if unknown:
            out["unknownKey"] = unknown
        return out

    def change(self, name: str, value: str) -> str:
        d = self.find(name)
        if d is None:
            return "NotSupported"
        return self.settings.change(d.name, value)
