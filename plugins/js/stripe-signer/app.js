// Stripe-style signer: `Stripe-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`,
// one v1 entry per active secret (newest first) during a rotation, as Stripe does.
// The secret stays in the host, and so does the body: the plugin asks for the HMAC of
// "<timestamp>." + body through `hmac-sha256-body-all` (WIT 0.3.0, as 0.2.0).
// Checked by plugins/conformance/signer-stripe.json.

import { hmacSha256BodyAll } from 'squall:plugin/host@0.3.0';

const HEX = '0123456789abcdef';

function hex(bytes) {
  let out = '';
  for (const b of bytes) out += HEX[b >> 4] + HEX[b & 15];
  return out;
}

const NOTHING = new Uint8Array(0);

// The ASCII bytes of `s` (a timestamp and a dot): QuickJS (componentize-qjs) has no TextEncoder.
function ascii(s) {
  return Uint8Array.from(s, (ch) => ch.charCodeAt(0));
}

export const signer = {
  sign(ctx, keyName, timestamp) {
    const t = BigInt(timestamp).toString();
    const prefix = ascii(`${t}.`);
    let macs;
    // Only the host call is guarded: its `err` (no such key) is a deliberate failure; a bug
    // anywhere else must trap, not pass for one.
    try {
      macs = hmacSha256BodyAll(keyName, prefix, NOTHING);
    } catch (e) {
      // A host function's `err` arrives as a thrown value (its `payload` is the host's message):
      // no such key is a deliberate failure, reported as plugin-error.
      const detail = typeof e === 'string' ? e : (e && e.payload) || String(e);
      return { tag: 'fail', val: `stripe-signer: ${detail}` };
    }
    const parts = [`t=${t}`, ...macs.map((mac) => `v1=${hex(mac)}`)];
    return { tag: 'signed', val: [['Stripe-Signature', parts.join(',')]] };
  },
};
