// Reshape transform: the JavaScript sample of Squall's shared reshape
// (plugins/conformance/README.md). The Python (plugins/python/reshape-transform) and Rust
// (plugins/rust/reshape-transform) twins produce byte-identical requests;
// plugins/conformance/transform-reshape.json checks all three.

import { configGet } from 'squall:plugin/host@0.3.0';

const MAX_DEPTH = 64;

// UTF-8 both ways. SpiderMonkey (componentize-js) has TextEncoder and TextDecoder; QuickJS
// (componentize-qjs) has neither, so the same source carries its own: strict decoding (no
// overlong forms, no surrogates, nothing above U+10FFFF; a BOM is kept, as `ignoreBOM`).
const utf8Encode =
  typeof TextEncoder === 'function'
    ? (s) => new TextEncoder().encode(s)
    : (s) => {
        const out = [];
        for (const ch of s) {
          const c = ch.codePointAt(0);
          if (c < 0x80) out.push(c);
          else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
          else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
          else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
        }
        return new Uint8Array(out);
      };

function utf8DecodeStrict(bytes) {
  if (typeof TextDecoder === 'function') {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  }
  let out = '';
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    let c;
    let n;
    if (b < 0x80) [c, n] = [b, 0];
    else if (b >= 0xc2 && b < 0xe0) [c, n] = [b & 31, 1];
    else if (b >= 0xe0 && b < 0xf0) [c, n] = [b & 15, 2];
    else if (b >= 0xf0 && b < 0xf5) [c, n] = [b & 7, 3];
    else throw new RangeError('invalid UTF-8');
    for (let k = 1; k <= n; k++) {
      const x = bytes[i + k];
      if (x === undefined || (x & 0xc0) !== 0x80) throw new RangeError('invalid UTF-8');
      c = (c << 6) | (x & 63);
    }
    if ((n === 2 && (c < 0x800 || (c >= 0xd800 && c < 0xe000))) || (n === 3 && (c < 0x10000 || c > 0x10ffff))) {
      throw new RangeError('invalid UTF-8');
    }
    out += String.fromCodePoint(c);
    i += n + 1;
  }
  return out;
}

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
  // A fraction or exponent needs a digit right before its '.', 'e' or 'E': without one
  // anywhere in the text (strings included), there is nothing to walk.
  if (!/\d[.eE]/.test(text)) return false;
  for (const m of text.matchAll(TOKENS)) {
    if (m[1] !== undefined || m[2] !== undefined) return true;
  }
  return false;
}

// Sort keys in code point order. The plain sort (UTF-16 units) gives the same order unless a
// key holds a unit at or above U+D800 (a surrogate, or U+E000-FFFF): only then the comparator,
// which costs a JavaScript call per comparison.
const HIGH_UNIT = /[\uD800-\uFFFF]/;
function sortedKeys(keys) {
  return keys.some((k) => HIGH_UNIT.test(k)) ? keys.sort(compareCodePoints) : keys.sort();
}

// A path is [parent, ".key" or index], joined only for an error message: a template string
// per value cost a sixth of a call.
function renderPath(path) {
  const parts = [];
  for (let p = path; p !== null; p = p[0]) parts.push(typeof p[1] === 'number' ? `[${p[1]}]` : p[1]);
  return parts.reverse().join('');
}

// Keys are remembered across calls (bounded): payloads repeat their keys.
const SNAKE_CACHE = new Map();
function snakeCaseCached(key) {
  let out = SNAKE_CACHE.get(key);
  if (out === undefined) {
    out = snakeCase(key);
    if (SNAKE_CACHE.size < 4096) SNAKE_CACHE.set(key, out);
  }
  return out;
}

// Values are kept as [key, value] entry lists so no key (not even __proto__) is special.
function reshapeValue(value, path, depth) {
  if (depth > MAX_DEPTH) throw new ReshapeError(`body nests deeper than ${MAX_DEPTH} levels`);
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new ReshapeError(`number at ${renderPath(path)} is outside the safe integer range`);
    }
    return value === 0 ? 0 : value; // -0 prints as 0
  }
  if (Array.isArray(value)) return value.map((v, i) => reshapeValue(v, [path, i], depth + 1));
  const origin = new Map();
  const out = new Map();
  for (const key of sortedKeys(Object.keys(value))) {
    const newKey = snakeCaseCached(key);
    if (origin.has(newKey)) {
      throw new ReshapeError(
        `fields ${quote(origin.get(newKey))} and ${quote(key)} at ${renderPath(path)} both become ${quote(newKey)}`,
      );
    }
    origin.set(newKey, key);
    out.set(newKey, reshapeValue(value[key], [path, `.${newKey}`], depth + 1));
  }
  return out;
}

function parseBody(bytes) {
  let text;
  try {
    text = utf8DecodeStrict(bytes);
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
    const keys = sortedKeys([...value.keys()]);
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
  const data = reshapeValue(parseBody(event.body), [null, '$'], 1);
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
      body: utf8Encode(encode(body)),
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
