"""``tls = "acme"``: one certificate order, blocking (run it in a worker thread): ``obtain``.

The maintained ``acme`` and ``josepy`` packages speak the protocol (RFC 8555); they are
imported here only, when an order starts, so ``sshtun --help`` never loads them. An order:
the account (its ES256 key made once, kept 0600 in the state directory; registering again
with the same key finds the same account), a new order for the name, the HTTP-01
challenge answered through the agent's own ``name:80`` publication (``Challenges`` holds
the key authorizations the port-80 responder serves, acmehttp.py), the CSR for a fresh
P-256 key, and the issued chain. Chain and key are written together, one file 0600
(``AcmeFiles.cert``): a certificate and a key that do not belong together is never seen.

Every failure is an ``AcmeError`` whose ``kind`` says what went wrong (the CA unreachable,
the order refused, the challenge failed with the CA's reason, the name not allowed) and
whose message is the CA's own words where it gave some.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sshtunnel_mgr.core.errors import SshtunError
from sshtunnel_mgr.runtime.fsutil import write_atomic

ORDER_TIMEOUT = 90.0  # seconds for the CA to validate and issue, once asked
NETWORK_TIMEOUT = 30  # seconds per request to the CA
USER_AGENT = "sshtun"

Kind = Literal["unreachable", "refused", "challenge", "not-allowed", "timeout"]


class AcmeError(SshtunError):
    def __init__(self, kind: Kind, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.kind = kind


@dataclass(frozen=True)
class AcmeRequest:
    name: str
    directory: str
    email: str | None = None
    ca_bundle: Path | None = None  # CAs for the directory's own HTTPS (else the system's)


class Challenges:
    """HTTP-01 tokens and their key authorizations, shared by the order (a worker thread)
    and the port-80 responder (the event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}

    def put(self, token: str, answer: str) -> None:
        with self._lock:
            self._answers[token] = answer

    def drop(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def answer(self, token: str) -> str | None:
        with self._lock:
            return self._answers.get(token)


class AcmeFiles:
    """Where one name's ACME state lives under the agent's state directory: one directory
    per CA (``acme/<CA host>-<directory hash>/``, it and ``acme/`` made 0700) holding the
    account key (``account.key``) and each name's chain and key (``<name>.pem``). A
    certificate from another directory (staging before production) is never served."""

    def __init__(self, state_dir: Path, name: str, directory: str) -> None:
        digest = hashlib.sha256(directory.encode()).hexdigest()[:12]
        host = "".join(c if c.isalnum() or c in ".-" else "_" for c in urlsplit(directory).netloc)
        self.root = state_dir / "acme"
        self.dir = self.root / f"{host or 'ca'}-{digest}"
        self.account_key = self.dir / "account.key"
        self.cert = self.dir / f"{name}.pem"

    def ensure_dir(self) -> None:
        for directory in (self.root, self.dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)

    def load_account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, made (and written 0600) the first time."""
        self.ensure_dir()
        try:
            data = self.account_key.read_bytes()
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            write_atomic(self.account_key, _key_pem(key), 0o600)
            return key
        loaded = serialization.load_pem_private_key(data, None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise AcmeError("refused", f"ACME account key {self.account_key} is not an EC key")
        return loaded

    def save(self, fullchain_pem: str, key: ec.EllipticCurvePrivateKey) -> None:
        self.ensure_dir()
        write_atomic(self.cert, fullchain_pem.encode("ascii") + _key_pem(key), 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def lifetime(path: Path) -> tuple[float, float] | None:
    """(not_before, not_after) of the certificate in ``path`` (seconds since the epoch), or
    None when there is no readable one."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def obtain(request: AcmeRequest, files: AcmeFiles, challenges: Challenges) -> None:
    """Order a certificate for ``request.name`` and save it (blocking). ``AcmeError``."""
    import requests
    from acme import errors

    try:
        _order(request, files, challenges)
    except AcmeError:
        raise
    except errors.ValidationError as exc:
        hint = _CHALLENGE_HINT.replace("NAME", request.name)
        raise AcmeError("challenge", _validation_reason(exc), hint) from None
    except (errors.TimeoutError, errors.PollError) as exc:
        raise AcmeError("timeout", f"the CA did not finish the order in time ({exc!r})") from None
    except errors.IssuanceError as exc:
        raise _refusal(exc.error) from None
    except errors.ClientError as exc:  # a malformed answer, an unexpected status
        raise AcmeError("refused", f"the CA's answer was not usable: {exc}") from None
    except requests.exceptions.RequestException as exc:
        raise AcmeError(
            "unreachable",
            f"ACME directory {request.directory} unreachable: {_reason(exc)}",
            "check acme_directory, the network, and acme_ca_bundle for a private CA",
        ) from None
    except OSError as exc:  # the state directory
        raise AcmeError("refused", f"ACME state in {files.dir}: {exc}") from None


_CHALLENGE_HINT = (
    "the CA must reach http://NAME/.well-known/acme-challenge/ on the bastion: the name's "
    "DNS record points at the bastion, [bastion.web] http_listen is on port 80 and lists the "
    "name as public, and the access file lets this key publish NAME:80 and NAME:443"
)


def _order(request: AcmeRequest, files: AcmeFiles, challenges: Challenges) -> None:
    from acme import challenges as acme_challenges
    from acme import client, crypto_util, errors, messages
    from josepy.jwa import ES256
    from josepy.jwk import JWKEC

    account_key = files.load_account_key()
    net = client.ClientNetwork(
        JWKEC(key=account_key),
        alg=ES256,
        # requests takes a CA bundle's path where acme types a bool (it passes it on as is)
        verify_ssl=cast(bool, str(request.ca_bundle)) if request.ca_bundle else True,
        user_agent=USER_AGENT,
        timeout=NETWORK_TIMEOUT,
    )
    try:
        directory = client.ClientV2.get_directory(request.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=request.email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:  # this key has an account already: use it
            existing = messages.RegistrationResource(uri=exc.location, body=registration)
            acme.query_registration(existing)
        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = crypto_util.make_csr(_key_pem(cert_key), [request.name])
        order = acme.new_order(csr)
        tokens = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA reuses a recent validation (Let's Encrypt: 30 days)
                found = [
                    c for c in authz.body.challenges if isinstance(c.chall, acme_challenges.HTTP01)
                ]
                if not found:
                    raise AcmeError(
                        "refused", f"the CA offers no HTTP-01 challenge for {request.name}"
                    )
                response, validation = found[0].response_and_validation(net.key)
                token = found[0].chall.encode("token")
                challenges.put(token, validation)
                tokens.append(token)
                acme.answer_challenge(found[0], response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            done = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                challenges.drop(token)
    except messages.Error as exc:
        raise _refusal(exc) from None
    files.save(done.fullchain_pem, cert_key)


def _refusal(error: Any) -> AcmeError:
    """The CA's problem document as an ``AcmeError`` (RFC 8555 section 6.7)."""
    code = str(getattr(error, "code", None) or getattr(error, "typ", "") or "")
    detail = str(getattr(error, "detail", None) or error)
    if code in ("rejectedIdentifier", "unsupportedIdentifier", "caa") or code.endswith(
        (":rejectedIdentifier", ":unsupportedIdentifier", ":caa")
    ):
        return AcmeError(
            "not-allowed",
            f"the CA will not issue for this name ({code}): {detail}",
            "the CA's policy refuses the name; check its spelling and CAA records",
        )
    return AcmeError("refused", f"the CA refused the order ({code or 'error'}): {detail}")


def _validation_reason(exc: Any) -> str:
    """Each failed challenge with the CA's own reason."""
    reasons = []
    for authz in getattr(exc, "failed_authzrs", []):
        name = authz.body.identifier.value
        for challenge in authz.body.challenges:
            if challenge.error is not None:
                detail = challenge.error.detail or str(challenge.error)
                reasons.append(f"{name} {challenge.chall.typ}: {detail}")
    return "the CA's challenge failed: " + ("; ".join(reasons) or "no reason given")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:297] + "..."
