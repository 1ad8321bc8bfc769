"""What the certificate blocks and the composition root know of the certificate store without
importing it: the use names, the settings it reads, and whether its directory holds a station
certificate.

An idle station at security profile 0 or 1 never builds the store (``Station.provide``,
agent/app.py), so the version blocks declare their settings and map their enums from here;
agent/security/store.py takes these same objects (a test keeps the layout names equal).
"""

from __future__ import annotations

from pathlib import Path

from agent.core.settings import SettingDef

CSMS_ROOT = "CSMSRootCertificate"
USES = (CSMS_ROOT, "ManufacturerRootCertificate", "V2GRootCertificate", "MORootCertificate",
        "OEMRootCertificate")  # the last one is 2.1's (ISO 15118-20: stored and listed only)

# The neutral settings the store reads (1.6 key names; 2.0.1 maps SecurityCtrlr variables).
STORE_SETTINGS: tuple[SettingDef, ...] = (
    SettingDef("CpoName", "str", ""),
    SettingDef("CertificateStoreMaxLength", "int", 20, readonly=True, min=1, max=1000),
    SettingDef("CertificateSignedMaxChainSize", "int", 10000, readonly=True, min=1,
               max=10000),
    SettingDef("AdditionalRootCertificateCheck", "bool", False, readonly=True),
)

# The station identity's pointer file, relative to the store's directory (its ``current``
# is the chain in use, ``next`` one kept until its validity starts).
IDENTITY_POINTER = ("station", "current.json")


def holds_identity(directory: Path) -> bool:
    """Whether a store in ``directory`` has a station certificate: then it has start-up
    duties (the A03 renewal timer, the A02.FR.08 switch to a certificate kept for later),
    so it is built at start-up; one stat, no parsing."""
    return directory.joinpath(*IDENTITY_POINTER).is_file()


__all__ = ["CSMS_ROOT", "IDENTITY_POINTER", "STORE_SETTINGS", "USES", "holds_identity"]
