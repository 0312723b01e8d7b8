"""
Which JOSE library refuses what, out of the box (issue 21).

Runs a set of hostile JSON Web Tokens through PyJWT (with C{cryptography})
and through joserfc, each used the way its documentation shows: the
verifying key and an allow-list of algorithms are passed, nothing else is
configured. Prints one row per case: C{refused (Error)} or C{ACCEPTED}.
A library that is not installed is reported as such.

    .venv/bin/python bench/jose_refusals.py

The attacker's tokens are built here by hand (base64url, C{hmac}); that is
forging, not verifying: verification is always the library's.

Cases:
  - C{valid RS256}: the control, must be accepted;
  - C{alg none}: unsigned, verifier allows RS256 only, and again with
    C{"none"} wrongly allowed as well;
  - C{HS256 confusion}: HMAC-SHA256 keyed with the RSA public key's PEM,
    verifier given the RSA public key and (misconfigured) RS256 + HS256,
    with the key as an object and as the PEM text;
  - C{ES256 header, RSA key}: algorithm and key type disagree;
  - C{crit unknown}: a validly signed token whose C{crit} names an extension
    nobody implements (RFC 7515 §4.1.11: must be refused);
  - C{oversized}: a validly signed token with a 1 MiB payload;
  - C{b64 false}: RFC 7797 unencoded payload inside a JWT.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC = PRIVATE.public_key()
PEM = PUBLIC.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
NOW = int(time.time())
CLAIMS = {"iss": "https://idp.example", "sub": "alice", "exp": NOW + 600, "iat": NOW}


def rs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}".encode()
    signature = PRIVATE.sign(signing_input, padding.PKCS1v15(), SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def hs256_with(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}".encode()
    return f"{signing_input.decode()}.{b64(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


def unsigned(claims: dict[str, Any]) -> str:
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}."


#: (case, token, allowed algorithms, key given as "object" or "pem")
CASES: list[tuple[str, str, list[str], str]] = [
    ("valid RS256 (control)", rs256({"alg": "RS256", "typ": "JWT"}, CLAIMS), ["RS256"], "object"),
    ("alg none, RS256 allowed", unsigned(CLAIMS), ["RS256"], "object"),
    ("alg none, none also allowed", unsigned(CLAIMS), ["RS256", "none"], "object"),
    ("HS256 confusion, RS256 allowed", hs256_with(PEM, {"alg": "HS256"}, CLAIMS), ["RS256"], "object"),
    (
        "HS256 confusion, HS256 also allowed, key object",
        hs256_with(PEM, {"alg": "HS256"}, CLAIMS),
        ["RS256", "HS256"],
        "object",
    ),
    (
        "HS256 confusion, HS256 also allowed, key PEM",
        hs256_with(PEM, {"alg": "HS256"}, CLAIMS),
        ["RS256", "HS256"],
        "pem",
    ),
    ("ES256 header, RSA key", rs256({"alg": "ES256"}, CLAIMS), ["RS256", "ES256"], "object"),
    (
        "crit unknown extension",
        rs256({"alg": "RS256", "crit": ["x-unheard-of"], "x-unheard-of": 1}, CLAIMS),
        ["RS256"],
        "object",
    ),
    ("oversized (1 MiB payload)", rs256({"alg": "RS256"}, {**CLAIMS, "pad": "x" * (1 << 20)}), ["RS256"], "object"),
    ("b64 false in a JWT", rs256({"alg": "RS256", "b64": False, "crit": ["b64"]}, CLAIMS), ["RS256"], "object"),
]


def pyjwt_verify(token: str, algorithms: list[str], key_form: str) -> None:
    import jwt

    key: Any = PEM.decode() if key_form == "pem" else PUBLIC
    jwt.decode(token, key, algorithms=algorithms)


def joserfc_verify(token: str, algorithms: list[str], key_form: str) -> None:
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    key = RSAKey.import_key(PEM)
    token_obj = jwt.decode(token, key, algorithms=algorithms)
    jwt.JWTClaimsRegistry().validate(token_obj.claims)


def outcome(verify: Callable[[str, list[str], str], None], token: str, algorithms: list[str], key_form: str) -> str:
    try:
        verify(token, algorithms, key_form)
    except ImportError:
        return "not installed"
    except Exception as error:  # noqa: BLE001 - any refusal is what we measure
        return f"refused ({type(error).__name__})"
    return "ACCEPTED"


def timing(verify: Callable[[str, list[str], str], None], rounds: int = 2000) -> str:
    token = CASES[0][1]
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            verify(token, ["RS256"], "object")
        return f"{(time.perf_counter() - start) / rounds * 1e6:.0f} us"
    except ImportError:
        return "not installed"


def main() -> None:
    libraries = [("PyJWT", pyjwt_verify), ("joserfc", joserfc_verify)]
    width = max(len(case[0]) for case in CASES)
    print(f"{'case':<{width}}  " + "  ".join(f"{name:<34}" for name, _ in libraries))
    for name, token, algorithms, key_form in CASES:
        row = [outcome(verify, token, algorithms, key_form) for _, verify in libraries]
        print(f"{name:<{width}}  " + "  ".join(f"{cell:<34}" for cell in row))
    print(f"{'RS256 verify, per token':<{width}}  " + "  ".join(f"{timing(verify):<34}" for _, verify in libraries))


if __name__ == "__main__":
    main()
