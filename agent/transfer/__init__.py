"""File transfer to and from the places a CSMS names: firmware downloads (``download``) and
diagnostics / log uploads (``upload``), over HTTP(S) and FTP.  Each protocol's library is
wrapped here once, so that its churn stays in this package."""
