"""TLS for kvcluster: the contexts a node and a client use, and a throwaway CA.

`contexts` turns certificate files into `ssl.SSLContext`s (a node's port, its
calls to peers, a client's calls) and checks which CA issued a peer's
certificate. `certs` makes a CA and certificates with `cryptography`, for
`Cluster(tls=True)` and `kvcluster certs`. Nothing here knows of Raft or HTTP.
"""

from .certs import CertificateAuthority, write_key_pair
from .contexts import (
    TlsError,
    client_context,
    issuer_check,
    server_context,
)

__all__ = [
    "CertificateAuthority",
    "TlsError",
    "client_context",
    "issuer_check",
    "server_context",
    "write_key_pair",
]
