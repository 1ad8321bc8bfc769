"""How the station verifies the HTTPS and FTPS servers it downloads firmware from and uploads
logs to.

The specifications leave it open which certificates such a server has.  The station trusts what
a general-purpose client would (the system's CA store, for servers with public certificates)
plus the roots it trusts for its CSMS: the installed CSMSRootCertificates and ``ocpp.ca_file``
(a CPO's own PKI often serves both).  The host name is checked, TLS 1.2 is the minimum as for
the OCPP connection.  A server whose certificate does not verify fails the attempt
(DownloadFailed / UploadFailure after the retries, reasonCode InvalidCertificate on 2.1).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable

log = logging.getLogger("cp_agent.transfer")


def context(ca_files: Iterable[str] = ()) -> ssl.SSLContext:
    """A client context: system CAs plus ``ca_files`` (PEM bundles; unreadable ones skipped
    with an error in the log, never a reason to trust less strictly)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in ca_files:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            log.error("file transfers: cannot load the CA bundle %s: %s", path, exc)
    return ctx


__all__ = ["context"]
