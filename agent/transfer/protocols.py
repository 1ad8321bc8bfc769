"""The file transfer protocols the station speaks, for the CSMS: 1.6 (security whitepaper)
SupportedFileTransferProtocols and 2.0.1 / 2.1 ``OCPPCommCtrlr.FileTransferProtocols``.

Derived from what :mod:`agent.transfer.download` and :mod:`agent.transfer.upload` both accept,
so the advertised list cannot drift from the code (SFTP, which FileTransferProtocols also
names, is neither).
"""

from __future__ import annotations

from agent.transfer import download, upload

# Upper case, as both specifications spell the members (FTP, FTPS, HTTP, HTTPS).
PROTOCOLS: tuple[str, ...] = tuple(sorted(s.upper() for s in
                                          set(download.SCHEMES) & set(upload.SCHEMES)))

__all__ = ["PROTOCOLS"]
