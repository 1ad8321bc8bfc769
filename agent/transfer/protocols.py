"""The file transfer protocols the station speaks, for the CSMS: 1.6 (security whitepaper)
SupportedFileTransferProtocols and 2.0.1 / 2.1 ``OCPPCommCtrlr.FileTransferProtocols``.

Derived from what :mod:`agent.transfer.download` and :mod:`agent.transfer.upload` both accept
(their ``SCHEMES`` are the tuples below), so the advertised list cannot drift from the code
(SFTP, which FileTransferProtocols also names, is neither).  The tuples live here so that
the blocks advertising the list do not import the transfer clients (and ftplib) at start-up.
"""

from __future__ import annotations

DOWNLOAD_SCHEMES: tuple[str, ...] = ("http", "https", "ftp", "ftps")
UPLOAD_SCHEMES: tuple[str, ...] = ("ftp", "ftps", "http", "https")

# Upper case, as both specifications spell the members (FTP, FTPS, HTTP, HTTPS).
PROTOCOLS: tuple[str, ...] = tuple(sorted(s.upper() for s in
                                          set(DOWNLOAD_SCHEMES) & set(UPLOAD_SCHEMES)))

__all__ = ["DOWNLOAD_SCHEMES", "PROTOCOLS", "UPLOAD_SCHEMES"]
