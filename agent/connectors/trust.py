"""The one TLS trust decision: the operating system's store plus ``[agent] ca_bundle``.

Every aiohttp session and msal's token session verify with a context from
:func:`build_ssl_context`, so a CA trusted for ARM is trusted for Entra too (REFERENCE E.10).

* On macOS and Windows, ``truststore`` verifies with the platform's own verifier (the Keychain,
  CryptoAPI), where ``ssl.create_default_context()`` reads only OpenSSL's paths, which there hold
  no proxy CA an IT department installed.
* On Linux and the other Unixes the operating system's store *is* OpenSSL's default locations,
  so the context loads them itself, once. ``truststore``'s OpenSSL backend instead calls
  ``set_default_verify_paths()`` on every ``wrap_socket``/``wrap_bio``: each new connection
  re-parses the whole CA bundle (about 20 ms of CPU for Debian's 144 certificates), and on
  OpenSSL 3.0-3.3 (Debian 12, Ubuntu 22.04/24.04, RHEL 9) every call also appends another
  directory lookup to the store, so verification gets slower the longer the process runs
  (sethmlarson/truststore#212, openssl/openssl#24140). A long-running agent on a jump host is
  exactly that process. A CA added to the store while the agent runs is trusted after a restart.
"""

from __future__ import annotations

import os
import re
import ssl
import sys
from pathlib import Path

import truststore

from agent.errors import ConfigError

# Where distributions keep the bundle when OpenSSL's compiled-in defaults hold none (the same
# places certifi-system-store and truststore look).
_CA_FILES = (
    "/etc/ssl/cert.pem",  # Alpine, Arch, Fedora 34+, RHEL 9+, the BSDs
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # newer Fedora and RHEL
    "/etc/pki/tls/cert.pem",  # older Fedora, RHEL, CentOS
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/ssl/ca-bundle.pem",  # SUSE
)
_HASHED_NAME = re.compile(r"^[0-9a-fA-F]{8}\.\d+$")
PLATFORM_VERIFIER = sys.platform in ("darwin", "win32")


def build_ssl_context(ca_bundle: str | Path | None) -> ssl.SSLContext:
    """A verifying client context: the operating system's trust store plus ``ca_bundle``."""
    if PLATFORM_VERIFIER:
        ctx: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, hostname checked
        _load_os_store(ctx)
    if ca_bundle:
        try:
            ctx.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"[agent] ca_bundle: cannot load {ca_bundle}: {exc}"]) from exc
    return ctx


def _load_os_store(ctx: ssl.SSLContext) -> None:
    """OpenSSL's default locations (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured) when they hold
    certificates, else the first bundle found where distributions keep one."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile or (paths.capath and _holds_hashed_certs(paths.capath)):
        ctx.set_default_verify_paths()
        return
    for cafile in _CA_FILES:
        if os.path.isfile(cafile):
            ctx.load_verify_locations(cafile=cafile)
            return


def _holds_hashed_certs(capath: str) -> bool:
    try:
        return any(_HASHED_NAME.match(name) for name in os.listdir(capath))
    except OSError:
        return False
