"""Station security: the certificate store (keys, CSRs, chains, roots by use) and the one
wrapper of the ``cryptography`` package's X.509 API."""
