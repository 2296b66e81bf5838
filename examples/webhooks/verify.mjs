import { createHmac, timingSafeEqual } from 'node:crypto';

// rawBody: the delivery's body exactly as received (a string); header: its Poptill-Signature.
export function verifyPoptill(rawBody, header, secret, toleranceMs = 300_000) {
  const parts = Object.fromEntries(header.split(',').map((p) => p.split('=')));
  const t = Number(parts.t);
  if (!Number.isSafeInteger(t) || Math.abs(Date.now() - t) > toleranceMs) return false;
  const mac = createHmac('sha256', secret).update(`poptill-webhook-v1\n${t}\n${rawBody}`).digest();
  const given = Buffer.from(parts.v1 ?? '', 'hex');
  return given.length === mac.length && timingSafeEqual(given, mac);
}
