// Stripe-style signer: `Stripe-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`,
// one v1 entry per active secret (newest first) during a rotation, as Stripe does.
// The secret stays in the host: the plugin asks for the HMAC through `hmac-sha256-all`.
// Checked by plugins/conformance/signer-stripe.json.

import { hmacSha256All } from 'squall:plugin/host@0.1.0';

const HEX = '0123456789abcdef';

function hex(bytes) {
  let out = '';
  for (const b of bytes) out += HEX[b >> 4] + HEX[b & 15];
  return out;
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

export const signer = {
  sign(ctx, request, keyName, timestamp) {
    const t = BigInt(timestamp).toString();
    const signed = concat(new TextEncoder().encode(`${t}.`), request.body);
    let macs;
    try {
      macs = hmacSha256All(keyName, signed);
    } catch (e) {
      const detail = typeof e === 'string' ? e : (e && e.payload) || String(e);
      throw { message: `stripe-signer: ${detail}` };
    }
    const parts = [`t=${t}`, ...macs.map((mac) => `v1=${hex(mac)}`)];
    return [['Stripe-Signature', parts.join(',')]];
  },
};
