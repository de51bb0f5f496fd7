// Reshape transform: the JavaScript sample of Squall's shared reshape
// (plugins/conformance/README.md). The Python (plugins/python/reshape-transform) and Rust
// (plugins/rust/reshape-transform) twins produce byte-identical requests;
// plugins/conformance/transform-reshape.json checks all three.

import { configGet } from 'squall:plugin/host@0.3.0';

const MAX_DEPTH = 64;

class ReshapeError extends Error {}

function isAsciiUpper(ch) {
  return ch >= 'A' && ch <= 'Z';
}

// customerId -> customer_id: an ASCII capital after an ASCII lower-case letter or digit gets an
// underscore; every ASCII capital is lower-cased; nothing else changes.
function snakeCase(key) {
  let out = '';
  let prev = '';
  for (const ch of key) {
    if (isAsciiUpper(ch)) {
      if ((prev >= 'a' && prev <= 'z') || (prev >= '0' && prev <= '9')) out += '_';
      out += ch.toLowerCase();
    } else {
      out += ch;
    }
    prev = ch;
  }
  return out;
}

const asciiUpper = (s) => s.replace(/[a-z]/g, (c) => c.toUpperCase());
const asciiLower = (s) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());
const quote = (s) => JSON.stringify(s);

// Keys are ordered by Unicode code point (as Python and Rust do), not by UTF-16 unit: the two
// orders differ only between a surrogate (U+D800-DFFF units) and a unit in U+E000-FFFF.
function compareCodePoints(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      if (x >= 0xd800 && y >= 0xd800) {
        x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
        y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
      }
      return x < y ? -1 : 1;
    }
  }
  return a.length - b.length;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function hasLoneSurrogate(value) {
  if (typeof value === 'string') return LONE_SURROGATE.test(value);
  if (Array.isArray(value)) return value.some(hasLoneSurrogate);
  if (value !== null && typeof value === 'object') {
    return Object.keys(value).some((k) => LONE_SURROGATE.test(k) || hasLoneSurrogate(value[k]));
  }
  return false;
}

// JSON.parse turns 1.0 into 1: look for number tokens with a fraction or exponent in the text
// (strings are matched first so digits inside them are skipped).
const TOKENS = /"(?:[^"\\]|\\.)*"|-?\d+(\.\d+)?([eE][+-]?\d+)?/g;

function hasNonIntegerToken(text) {
  for (const m of text.matchAll(TOKENS)) {
    if (m[1] !== undefined || m[2] !== undefined) return true;
  }
  return false;
}

// Values are kept as [key, value] entry lists so no key (not even __proto__) is special.
function reshapeValue(value, path, depth) {
  if (depth > MAX_DEPTH) throw new ReshapeError(`body nests deeper than ${MAX_DEPTH} levels`);
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new ReshapeError(`number at ${path} is outside the safe integer range`);
    }
    return value === 0 ? 0 : value; // -0 prints as 0
  }
  if (Array.isArray(value)) return value.map((v, i) => reshapeValue(v, `${path}[${i}]`, depth + 1));
  const origin = new Map();
  const out = new Map();
  for (const key of Object.keys(value).sort(compareCodePoints)) {
    const newKey = snakeCase(key);
    if (origin.has(newKey)) {
      throw new ReshapeError(
        `fields ${quote(origin.get(newKey))} and ${quote(key)} at ${path} both become ${quote(newKey)}`,
      );
    }
    origin.set(newKey, key);
    out.set(newKey, reshapeValue(value[key], `${path}.${newKey}`, depth + 1));
  }
  return out;
}

function parseBody(bytes) {
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new ReshapeError('body is not valid UTF-8');
  }
  let payload;
  try {
    payload = JSON.parse(text);
  } catch {
    throw new ReshapeError('body is not valid JSON');
  }
  // Only a \u escape can produce a lone surrogate: skip the walk when there is none.
  if (text.includes('\\u') && hasLoneSurrogate(payload)) throw new ReshapeError('body contains a lone surrogate escape');
  if (hasNonIntegerToken(text)) throw new ReshapeError('body contains a number that is not an integer');
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    throw new ReshapeError('body is not a JSON object');
  }
  return payload;
}

function formatCents(cents) {
  const sign = cents < 0 ? '-' : '';
  const abs = Math.abs(cents);
  return `${sign}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
}

function addComputed(data) {
  const cents = data.get('amount_cents');
  if (typeof cents === 'number') data.set('amount', formatCents(cents));
  const currency = data.get('currency');
  if (typeof currency === 'string') data.set('currency', asciiUpper(currency));
  const items = data.get('items');
  if (Array.isArray(items)) data.set('item_count', items.length);
}

// Compact JSON with keys in code point order: the same bytes Python's
// json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) writes.
function encode(value) {
  if (value instanceof Map) {
    const keys = [...value.keys()].sort(compareCodePoints);
    return `{${keys.map((k) => `${quote(k)}:${encode(value.get(k))}`).join(',')}}`;
  }
  if (Array.isArray(value)) return `[${value.map(encode).join(',')}]`;
  if (typeof value === 'bigint') return value.toString();
  return JSON.stringify(value);
}

function mediaType(contentType) {
  return asciiLower(contentType.split(';', 1)[0].replace(/^[ \t]+|[ \t]+$/g, ''));
}

function skipList() {
  const raw = configGet('skip-event-types');
  if (raw === undefined || raw === null) return [];
  return raw
    .split(',')
    .map((t) => t.replace(/^[ \t]+|[ \t]+$/g, ''))
    .filter((t) => t.length > 0);
}

function reshape(event) {
  if (skipList().includes(event.eventType)) {
    return { tag: 'skip', val: `event type ${event.eventType} is listed in skip-event-types` };
  }
  const mt = mediaType(event.contentType);
  if (mt !== 'application/json') {
    return { tag: 'skip', val: `content type ${mt} is not application/json` };
  }
  const data = reshapeValue(parseBody(event.body), '$', 1);
  addComputed(data);
  const body = new Map([
    ['attempt', event.attempt],
    ['data', data],
    ['id', event.id],
    ['occurred_at', BigInt(event.createdAt) / 1000n],
    ['source', event.appId],
    ['type', event.eventType],
  ]);
  const headers = [['content-type', 'application/json']];
  for (const [name, value] of event.headers) {
    if (asciiLower(name) !== 'content-type') headers.push([name, value]);
  }
  return {
    tag: 'send',
    val: {
      method: 'POST',
      url: event.endpointUrl,
      headers,
      body: new TextEncoder().encode(encode(body)),
    },
  };
}

// A payload the reshape refuses is a deliberate failure: returned as `fail`, reported as
// plugin-error. Anything else thrown is a bug: it traps, and the host reports the exception's
// type, message and stack (printed by `reportBugs`).
export const transform = {
  transform(event) {
    try {
      return reshape(event);
    } catch (e) {
      if (e instanceof ReshapeError) return { tag: 'fail', val: `reshape: ${e.message}` };
      reportBug(e);
      throw e;
    }
  },
};

// The JavaScript engine prints an uncaught exception's message and stack, not its type:
// print `TypeError: ...` before letting it trap (stderr is captured by the host).
function reportBug(e) {
  console.error(e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : `uncaught: ${String(e)}`);
}
