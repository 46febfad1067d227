"""Loading the --metrics TLS certificate and key without ever asking for a passphrase.

Given an encrypted key and no password callback, OpenSSL asks on the controlling terminal
("Enter PEM pass phrase:") and waits: a tracer started by hand sits there with its BPF
programs loaded, `-d` never ends it, and under a service manager it hangs at start. A
callback that refuses turns that into one line and exit 2.
"""

from __future__ import annotations

import ssl

from .errors import TcpacceptError


class EncryptedKeyError(TcpacceptError):
    def __init__(self, keyfile: str) -> None:
        super().__init__(f"--metrics-tls-key {keyfile}: the key is encrypted (it needs a "
                         "passphrase); give an unencrypted key (e.g. openssl pkey -in KEY "
                         "-out PLAIN)", exit_code=2)


def load_cert_chain_without_prompt(context: ssl.SSLContext, certfile: str,
                                   keyfile: str) -> None:
    """context.load_cert_chain, but an encrypted key raises EncryptedKeyError instead of
    prompting; other failures are ssl.SSLError / OSError as before."""
    def refuse_passphrase() -> bytes:
        raise EncryptedKeyError(keyfile)

    context.load_cert_chain(certfile, keyfile, password=refuse_passphrase)
