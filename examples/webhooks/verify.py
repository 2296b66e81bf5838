import hashlib, hmac, time

# raw_body: the delivery's body exactly as received (bytes); header: its Poptill-Signature.
def verify_poptill(raw_body: bytes, header: str, secret: str, tolerance_ms: int = 300_000) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if not parts.get("t", "").isdigit() or abs(time.time() * 1000 - int(parts["t"])) > tolerance_ms:
        return False
    mac = hmac.new(secret.encode(), b"poptill-webhook-v1\n" + parts["t"].encode() + b"\n" + raw_body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts.get("v1", ""))
