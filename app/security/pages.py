"""The server-rendered pages of the authorization flow: login, patient picker, errors.

Plain HTML forms, no JavaScript, so any browser and a headless HTTP client can use them.
Every value is escaped; the pages are sent with a CSP that forbids scripts and framing
(clickjacking of the login form).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from urllib.parse import urlsplit

# What may stand as a CSP host-source: a DNS name or IP literal and an optional port. Anything
# else (userinfo, spaces, `;`) could break or extend the policy, so it is left out.
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def security_headers(redirect_uri: str | None = None) -> dict[str, str]:
    """The headers of every page. `redirect_uri` is where the page's forms end up.

    CSP `form-action` also governs the redirects that follow a form post: a browser blocks the
    final 303 to the app unless the app's origin is listed too, and the sign-in would stop
    on the last page.
    """
    form_action = "'self'"
    if redirect_uri:
        parts = urlsplit(redirect_uri)
        if parts.scheme in ("http", "https") and _HOST_PORT.fullmatch(parts.netloc):
            form_action += f" {parts.scheme}://{parts.netloc}"
    return {
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
        f"form-action {form_action}; frame-ancestors 'none'",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}"
    "label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]"
    "{width:100%;padding:.4rem}button{margin-top:1rem;padding:.4rem 1rem}"
    ".error{color:#a00}.scopes{font-size:.9rem;color:#444}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def login_page(*, client_name: str, scope: str, csrf: str, error: str | None = None) -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page(
        "Sign in to Hestia",
        f"<p><strong>{escape(client_name)}</strong> asks for access:</p>"
        f'<p class="scopes">{escape(scope)}</p>{message}'
        '<form method="post" action="authorize">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
        '<input type="hidden" name="step" value="login">'
        '<label for="username">Username</label>'
        '<input type="text" id="username" name="username" autocomplete="username" required>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password" '
        'autocomplete="current-password" required>'
        '<button type="submit" id="sign-in">Sign in and allow</button>'
        "</form>"
        '<form method="post" action="authorize">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
        '<input type="hidden" name="step" value="deny">'
        '<button type="submit" id="deny">Deny</button></form>',
    )


def patient_picker(
    *, patients: Sequence[tuple[str, str]], csrf: str, error: str | None = None
) -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    options = "".join(
        f'<label><input type="radio" name="patient" value="{escape(pid)}"> '
        f"{escape(display)} <small>(Patient/{escape(pid)})</small></label>"
        for pid, display in patients
    )
    return _page(
        "Choose a patient",
        f'{message}<form method="post" action="authorize">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
        '<input type="hidden" name="step" value="patient">'
        f"{options or '<p>No patients are stored yet.</p>'}"
        '<label for="patient-id">…or a patient id</label>'
        '<input type="text" id="patient-id" name="patient_id">'
        '<button type="submit" id="choose">Continue</button></form>',
    )


def error_page(message: str) -> str:
    return _page("Authorization failed", f'<p class="error">{escape(message)}</p>')
