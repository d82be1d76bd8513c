"""What the server advertises: SMART configuration, OpenID configuration, CapabilityStatement
`rest.security`. Each lists only what is really implemented.
"""

from __future__ import annotations

from typing import Any

from app.security.service import SecurityConfig

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# SMART App Launch 2.2 capabilities (conformance.html) this server implements.
CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)

SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.rs",
    "user/*.rs",
    "system/*.rs",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
)
AUTH_METHODS = ("client_secret_basic", "private_key_jwt")
# Client assertions (private_key_jwt): the algorithms SMART Backend Services names.
SIGNING_ALGORITHMS = ("RS384", "ES384")
# Id tokens: RS256, mandatory for OpenID providers (OpenID Connect Core §15.1).
ID_TOKEN_ALGORITHMS = ("RS256",)


def smart_configuration(config: SecurityConfig) -> dict[str, Any]:
    """`/.well-known/smart-configuration` (SMART App Launch 2.2 §2.1)."""
    return {
        "issuer": config.issuer,
        "jwks_uri": config.jwks_url,
        "authorization_endpoint": config.authorize_url,
        "token_endpoint": config.token_url,
        "introspection_endpoint": config.introspect_url,
        "revocation_endpoint": config.revoke_url,
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        # Not a SMART field, but RFC 8414 metadata SMART allows: apps reading only this
        # document learn how to check the id_token of `sso-openid-connect`.
        "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGORITHMS),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "capabilities": list(CAPABILITIES),
        "code_challenge_methods_supported": ["S256"],
    }


def openid_configuration(config: SecurityConfig) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 metadata, needed for `sso-openid-connect`."""
    return {
        "issuer": config.issuer,
        "jwks_uri": config.jwks_url,
        "authorization_endpoint": config.authorize_url,
        "token_endpoint": config.token_url,
        "introspection_endpoint": config.introspect_url,
        "revocation_endpoint": config.revoke_url,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGORITHMS),
        "scopes_supported": ["openid", "fhirUser"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
    }


def capability_security(config: SecurityConfig) -> dict[str, Any]:
    """The CapabilityStatement `rest[0].security` element (R4), with SMART's oauth-uris."""
    return {
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": "authorize", "valueUri": config.authorize_url},
                    {"url": "token", "valueUri": config.token_url},
                    {"url": "revoke", "valueUri": config.revoke_url},
                    {"url": "introspect", "valueUri": config.introspect_url},
                ],
            }
        ],
        "description": "SMART App Launch 2.2: authorization code with PKCE (S256), Backend "
        "Services (private_key_jwt), token introspection and revocation.",
    }
