"""Schemathesis hooks for scripts/api-contract (loaded through `hooks` in schemathesis.toml).

A checkout spends its card token's CVC token, and the event ledger limits each card across
the event (two checkouts in progress, each item's purchase limit, three recent declines), so
one seeded token would make every checkout after the first fail for reasons the contract run
is not about. Before each checkout whose body still carries the seeded token
(ST_CARD_TOKEN, placed by `body.token` in schemathesis.toml), this mints a token for a card
of its own (POST /v1/tokens, like the hosted card frame) and puts it, and its CVC token when
the body has one, in place. Bodies whose token the generator changed are sent as they are.
"""

from __future__ import annotations

import json
import os
import random
import urllib.error
import urllib.request

import schemathesis

CHECKOUT_PATH = "/v1/events/{id}/checkout"
_counter = random.Random(int(os.environ.get("ST_SEED", "0") or 0)).randrange(10**7)


def _luhn_valid(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _fresh_card() -> str:
    """A new approving Visa test number (the scheme of scripts/test-cards.mjs)."""
    global _counter
    _counter = (_counter + 1) % 10**7
    middle = f"{_counter:07d}"
    for d in range(10):
        number = f"4242{middle}{d}4242"
        if _luhn_valid(number):
            return number
    raise RuntimeError("no Luhn digit found")


def _mint_token(event_id: str) -> dict:
    body = {
        "event_id": event_id,
        "card": {"number": _fresh_card(), "exp_month": 12, "exp_year": 2034, "cvc": "123"},
    }
    req = urllib.request.Request(
        os.environ["POPTILL_URL"] + "/v1/tokens",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != CHECKOUT_PATH or case.method.upper() != "POST":
        return
    body = case.body
    seeded = os.environ.get("ST_CARD_TOKEN")
    if not isinstance(body, dict) or not seeded or body.get("token") != seeded:
        return
    event_id = (case.path_parameters or {}).get("id") or os.environ["ST_EVENT_ID"]
    try:
        minted = _mint_token(str(event_id))
    except (urllib.error.URLError, OSError, ValueError):
        return  # e.g. an unknown event id: send the request as generated
    body["token"] = minted["token"]
    if isinstance(body.get("cvc_token"), str):
        body["cvc_token"] = minted["cvc_token"]
