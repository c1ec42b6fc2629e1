// The default codec of commands, events, state and replies (docs/CODEC.md):
// MessagePack with field names, byte-identical to the Rust SDK
// (rmp_serde::encode::write_named / rmp_serde::from_slice) and the Python
// SDK, so a history written in one language replays in another; and the
// tooling JSON in serde_json's externally tagged shape
// (`{"Deposit":{"amount":100}}`, `"GetBalance"`), character for character.
//
// JavaScript has no declared types, so values are described by a small
// schema (`t` below):
//
//   t.struct('State', { balance: t.i64, transactions: t.u64 })   a struct: a plain object
//   t.union('Command', { Deposit: { amount: t.i64 }, GetBalance: null })
//       an enum; its values are plain objects tagged by `type`:
//       { type: 'Deposit', amount: 100 }, { type: 'GetBalance' };
//       Command.Deposit({ amount: 100 }) builds one
//   t.untagged(t.string, t.i64)     #[serde(untagged)]: the first alternative that fits
//   t.option(T), t.list(T), t.tuple(A, B), t.map(K, V), t.bytes, t.bool, t.string,
//   t.f64, t.f32, t.i8 … t.i64, t.u8 … t.u64, t.unit, t.unitStruct(name), t.any
//
// Integers: JS numbers (t.i64 …), or BigInts with t.big.i64 / t.big.u64;
// both encode for either. A value beyond 2^53 decodes only into t.big.*
// (a number would lose it), with an error that says so. The bytes of an
// integer depend only on its value, never on the declared width, which only
// bounds it. t.any decodes to a number when safe, else a BigInt.
// No dependency: componentize-js bundles what is imported.

export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CodecError';
  }
}

const MAX_DEPTH = 512;
const UTF8 = new TextEncoder();
const UTF8_DECODER = new TextDecoder('utf-8', { fatal: true });
/** Marks a union value built by a constructor, so untyped encoding finds its schema. */
export const SCHEMA = Symbol.for('cairn.schema');

// ---------------------------------------------------------------------------
// Raw values: what the MessagePack reader and the JSON parser produce
// ---------------------------------------------------------------------------

/** A float read from the wire (kept apart from integers, as serde does). */
class RawFloat {
  constructor(v, f32 = false) {
    this.v = v;
    this.f32 = f32;
  }
}

/** A map read from the wire: every pair, in order. */
class RawMap {
  constructor(pairs) {
    this.pairs = pairs;
  }
}

function what(raw) {
  if (raw === null || raw === undefined) return 'nil';
  if (typeof raw === 'boolean') return `boolean \`${raw}\``;
  if (typeof raw === 'number' || typeof raw === 'bigint') return `integer \`${raw}\``;
  if (raw instanceof RawFloat) return `floating point \`${raw.v}\``;
  if (typeof raw === 'string') return `string ${JSON.stringify(raw)}`;
  if (raw instanceof Uint8Array) return 'bytes';
  if (Array.isArray(raw)) return 'sequence';
  if (raw instanceof RawMap) return 'map';
  return typeof raw;
}

// ---------------------------------------------------------------------------
// Writing MessagePack
// ---------------------------------------------------------------------------

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.len = 0;
    this.view = new DataView(this.buf.buffer);
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
    this.view = new DataView(b.buffer);
  }
  u8(x) {
    this.reserve(1);
    this.buf[this.len++] = x;
  }
  u8u8(a, b) {
    this.reserve(2);
    this.buf[this.len++] = a;
    this.buf[this.len++] = b;
  }
  u16(marker, x) {
    this.reserve(3);
    this.buf[this.len] = marker;
    this.view.setUint16(this.len + 1, x);
    this.len += 3;
  }
  u32(marker, x) {
    this.reserve(5);
    this.buf[this.len] = marker;
    this.view.setUint32(this.len + 1, x);
    this.len += 5;
  }
  bytes(b) {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  finish() {
    return this.buf.slice(0, this.len);
  }
}

const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;

function writeInt(w, v) {
  if (typeof v === 'bigint') {
    if (v >= -(2n ** 31n) && v < 2n ** 32n) return writeInt(w, Number(v));
    if (v > U64_MAX || v < I64_MIN) throw new CodecError(`integer ${v} does not fit in 64 bits`);
    w.reserve(9);
    w.buf[w.len] = v >= 0n ? 0xcf : 0xd3;
    if (v >= 0n) w.view.setBigUint64(w.len + 1, v);
    else w.view.setBigInt64(w.len + 1, v);
    w.len += 9;
    return;
  }
  if (v >= 0) {
    if (v < 0x80) w.u8(v);
    else if (v < 0x100) w.u8u8(0xcc, v);
    else if (v < 0x10000) w.u16(0xcd, v);
    else if (v < 0x100000000) w.u32(0xce, v);
    else writeInt(w, BigInt(v));
  } else if (v >= -32) w.u8(v & 0xff);
  else if (v >= -0x80) w.u8u8(0xd0, v & 0xff);
  else if (v >= -0x8000) w.u16(0xd1, v & 0xffff);
  else if (v >= -0x80000000) w.u32(0xd2, v >>> 0);
  else writeInt(w, BigInt(v));
}

function writeStr(w, s) {
  const len = s.length;
  if (len < 32) {
    // A short string, ASCII as names and tags mostly are: its bytes are its
    // char codes (no encoder call, no temporary array).
    w.reserve(len + 1);
    const buf = w.buf;
    const at = w.len;
    let i = 0;
    for (; i < len; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) break;
      buf[at + 1 + i] = c;
    }
    if (i === len) {
      buf[at] = 0xa0 | len;
      w.len = at + 1 + len;
      return;
    }
  }
  const b = UTF8.encode(s);
  const n = b.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n < 0x100) w.u8u8(0xd9, n);
  else if (n < 0x10000) w.u16(0xda, n);
  else w.u32(0xdb, n);
  w.bytes(b);
}

function writeLen(w, n, fix, m16, m32) {
  if (n < 16) w.u8(fix | n);
  else if (n < 0x10000) w.u16(m16, n);
  else w.u32(m32, n);
}
const arrayLen = (w, n) => writeLen(w, n, 0x90, 0xdc, 0xdd);
const mapLen = (w, n) => writeLen(w, n, 0x80, 0xde, 0xdf);

function writeBin(w, b) {
  const n = b.length;
  if (n < 0x100) w.u8u8(0xc4, n);
  else if (n < 0x10000) w.u16(0xc5, n);
  else w.u32(0xc6, n);
  w.bytes(b);
}

function writeF64(w, v) {
  w.reserve(9);
  w.buf[w.len] = 0xcb;
  w.view.setFloat64(w.len + 1, v);
  w.len += 9;
}

function writeF32(w, v) {
  w.reserve(5);
  w.buf[w.len] = 0xca;
  w.view.setFloat32(w.len + 1, v);
  w.len += 5;
}

// ---------------------------------------------------------------------------
// Reading MessagePack into raw values
// ---------------------------------------------------------------------------

class Reader {
  constructor(data) {
    this.data = data;
    this._view = null;
    this.pos = 0;
  }
  /** A DataView of the data, made on first use (the usual bytes need none). */
  get view() {
    if (this._view === null) this._view = new DataView(this.data.buffer, this.data.byteOffset, this.data.byteLength);
    return this._view;
  }
  need(n) {
    if (this.pos + n > this.data.length) throw new CodecError('unexpected end of input');
  }
  value(depth = 0) {
    if (depth > MAX_DEPTH) throw new CodecError('depth limit exceeded');
    this.need(1);
    const m = this.data[this.pos++];
    const v = this.view;
    if (m < 0x80) return m;
    if (m >= 0xe0) return m - 0x100;
    if (m >= 0xa0 && m <= 0xbf) return this.str(m & 0x1f);
    if (m >= 0x90 && m <= 0x9f) return this.array(m & 0x0f, depth);
    if (m >= 0x80 && m <= 0x8f) return this.map(m & 0x0f, depth);
    switch (m) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xcc: this.need(1); return this.data[this.pos++];
      case 0xcd: this.need(2); this.pos += 2; return v.getUint16(this.pos - 2);
      case 0xce: this.need(4); this.pos += 4; return v.getUint32(this.pos - 4);
      case 0xcf: this.need(8); this.pos += 8; return small(v.getBigUint64(this.pos - 8));
      case 0xd0: this.need(1); this.pos += 1; return v.getInt8(this.pos - 1);
      case 0xd1: this.need(2); this.pos += 2; return v.getInt16(this.pos - 2);
      case 0xd2: this.need(4); this.pos += 4; return v.getInt32(this.pos - 4);
      case 0xd3: this.need(8); this.pos += 8; return small(v.getBigInt64(this.pos - 8));
      case 0xca: this.need(4); this.pos += 4; return new RawFloat(v.getFloat32(this.pos - 4), true);
      case 0xcb: this.need(8); this.pos += 8; return new RawFloat(v.getFloat64(this.pos - 8));
      case 0xd9: this.need(1); return this.str(this.data[this.pos++]);
      case 0xda: this.need(2); this.pos += 2; return this.str(v.getUint16(this.pos - 2));
      case 0xdb: this.need(4); this.pos += 4; return this.str(v.getUint32(this.pos - 4));
      case 0xc4: this.need(1); return this.take(this.data[this.pos++]).slice();
      case 0xc5: this.need(2); this.pos += 2; return this.take(v.getUint16(this.pos - 2)).slice();
      case 0xc6: this.need(4); this.pos += 4; return this.take(v.getUint32(this.pos - 4)).slice();
      case 0xdc: this.need(2); this.pos += 2; return this.array(v.getUint16(this.pos - 2), depth);
      case 0xdd: this.need(4); this.pos += 4; return this.array(v.getUint32(this.pos - 4), depth);
      case 0xde: this.need(2); this.pos += 2; return this.map(v.getUint16(this.pos - 2), depth);
      case 0xdf: this.need(4); this.pos += 4; return this.map(v.getUint32(this.pos - 4), depth);
      default:
        if ((m >= 0xd4 && m <= 0xd8) || (m >= 0xc7 && m <= 0xc9)) {
          throw new CodecError(`MessagePack extension types are not part of the codec (marker 0x${m.toString(16)})`);
        }
        throw new CodecError(`invalid MessagePack marker 0x${m.toString(16)}`);
    }
  }
  take(n) {
    this.need(n);
    this.pos += n;
    return this.data.subarray(this.pos - n, this.pos);
  }
  str(n) {
    try {
      return UTF8_DECODER.decode(this.take(n));
    } catch (e) {
      if (e instanceof CodecError) throw e;
      throw new CodecError('invalid UTF-8 in a string');
    }
  }
  array(n, depth) {
    if (n > this.data.length - this.pos) throw new CodecError('unexpected end of input');
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }
  map(n, depth) {
    if (2 * n > this.data.length - this.pos) throw new CodecError('unexpected end of input');
    const pairs = new Array(n);
    for (let i = 0; i < n; i++) pairs[i] = [this.value(depth + 1), this.value(depth + 1)];
    return new RawMap(pairs);
  }
}

/**
 * Thrown by a schema's `_read` (the fast decoding path) for bytes it leaves
 * to the general path; `decode` then decodes the whole value again with
 * `Reader.value` and `_conv`, which gives the value or the exact error.
 */
const UNUSUAL = Object.freeze({ unusual: true });

/** Whether `data` holds `bytes` at `pos`. */
function bytesAt(data, pos, bytes) {
  const n = bytes.length;
  if (pos + n > data.length) return false;
  for (let i = 0; i < n; i++) {
    if (data[pos + i] !== bytes[i]) return false;
  }
  return true;
}

/** A BigInt as a number when it is safe. */
function small(b) {
  return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
}

// ---------------------------------------------------------------------------
// JSON text → raw values (integers beyond 2^53 stay exact)
// ---------------------------------------------------------------------------

function parseJson(text) {
  let i = 0;
  const n = text.length;
  const fail = (msg) => {
    throw new CodecError(`${msg} at offset ${i}`);
  };
  const ws = () => {
    while (i < n && (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t')) i++;
  };
  const value = (depth) => {
    if (depth > MAX_DEPTH) fail('recursion limit exceeded');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const pairs = [];
      ws();
      if (text[i] === '}') {
        i++;
        return new RawMap(pairs);
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('key must be a string');
        const k = string();
        ws();
        if (text[i++] !== ':') fail('expected `:`');
        pairs.push([k, value(depth + 1)]);
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') {
          i++;
          return new RawMap(pairs);
        } else fail('expected `,` or `}`');
      }
    }
    if (c === '[') {
      i++;
      const out = [];
      ws();
      if (text[i] === ']') {
        i++;
        return out;
      }
      for (;;) {
        out.push(value(depth + 1));
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') {
          i++;
          return out;
        } else fail('expected `,` or `]`');
      }
    }
    if (c === '"') return string();
    if (text.startsWith('true', i)) {
      i += 4;
      return true;
    }
    if (text.startsWith('false', i)) {
      i += 5;
      return false;
    }
    if (text.startsWith('null', i)) {
      i += 4;
      return null;
    }
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 400));
    if (!m || m[0] === '') fail('expected value');
    i += m[0].length;
    if (m[2] || m[3]) return new RawFloat(Number(m[0]));
    return small(BigInt(m[0]));
  };
  const string = () => {
    const m = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(text.slice(i));
    if (!m) fail('invalid string');
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const v = value(0);
  ws();
  if (i !== n) fail('trailing characters');
  return v;
}

// ---------------------------------------------------------------------------
// Writing JSON text the way serde_json does
// ---------------------------------------------------------------------------

/** A finite float as serde_json (ryu) writes it: `3.0`, `1e16`, `1.5e-7`, `0.0001`. */
export function floatJson(v, f32 = false) {
  if (!Number.isFinite(v)) return 'null';
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0';
  const sign = v < 0 ? '-' : '';
  v = Math.abs(v);
  let s;
  if (f32) {
    for (let p = 1; p <= 9; p++) {
      s = v.toExponential(p - 1);
      if (Math.fround(Number(s)) === v) break;
    }
  } else {
    s = v.toExponential();
  }
  const [mant, exp] = s.split('e');
  const digits = mant.replace('.', '').replace(/0+$/, '') || '0';
  const nd = digits.length;
  const kk = Number(exp) + 1; // value = 0.digits × 10^kk
  const k = kk - nd;
  const [hi, lo] = f32 ? [13, -6] : [16, -5];
  if (k >= 0 && kk <= hi) return `${sign}${digits}${'0'.repeat(k)}.0`;
  if (kk > 0 && kk <= hi) return `${sign}${digits.slice(0, kk)}.${digits.slice(kk)}`;
  if (kk > lo && kk <= 0) return `${sign}0.${'0'.repeat(-kk)}${digits}`;
  const e = kk > 0 ? `e+${kk - 1}` : `e${kk - 1}`;
  return nd === 1 ? `${sign}${digits}${e}` : `${sign}${digits[0]}.${digits.slice(1)}${e}`;
}

const jsonStr = (s) => JSON.stringify(s);

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

/**
 * A type of the codec. Methods: `_enc(w, v, depth)` writes MessagePack,
 * `_conv(raw, json, depth)` turns a raw value into a JS value (`json`: it
 * came from JSON text), `_json(v, out, depth)` pushes JSON text.
 */
class Schema {
  constructor(name) {
    this._name = name;
  }
  /**
   * The fast decoding path: reads one value of this schema straight from
   * `r` (a Reader). By default the raw value, converted (the general path
   * for this part); the struct, union, integer and string schemas read
   * their usual bytes directly and throw UNUSUAL on anything else.
   */
  _read(r, depth) {
    return this._conv(r.value(depth), false, depth);
  }
  toString() {
    return this._name;
  }
}

function isInt(v) {
  return typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v));
}

class IntSchema extends Schema {
  constructor(name, lo, hi, big = false) {
    super(big ? `big ${name}` : name);
    this.width = name;
    this.lo = lo;
    this.hi = hi;
    /** Decodes to a BigInt always (t.big.*); otherwise to a number, refusing what a number cannot hold exactly. */
    this.big = big;
    // Bounds as numbers, for the common case without BigInt (an interpreter
    // pays for every BigInt): exact for every safe integer.
    this.loN = Number(lo);
    this.hiN = Number(hi);
  }
  check(v) {
    if (typeof v === 'number' && v >= this.loN && v <= this.hiN && Number.isSafeInteger(v)) return;
    if (!isInt(v)) throw new CodecError(`invalid type: ${describe(v)}, expected ${this._name}`);
    const b = BigInt(v);
    if (b < this.lo || b > this.hi) throw new CodecError(`invalid value: integer \`${v}\`, expected ${this._name}`);
  }
  _accepts(v) {
    if (typeof v === 'number') return Number.isInteger(v) && v >= this.loN && v <= this.hiN;
    return typeof v === 'bigint' && v >= this.lo && v <= this.hi;
  }
  _enc(w, v) {
    this.check(v);
    writeInt(w, v);
  }
  _read(r, depth) {
    const d = r.data;
    const p = r.pos;
    const m = d[p];
    let v;
    let size;
    // The forms of integers up to 32 bits, read without a DataView.
    if (m < 0x80) (v = m), (size = 1);
    else if (m >= 0xe0) (v = m - 0x100), (size = 1);
    else if (m === 0xcc) (v = d[p + 1]), (size = 2);
    else if (m === 0xcd) (v = (d[p + 1] << 8) | d[p + 2]), (size = 3);
    else if (m === 0xce) (v = d[p + 1] * 0x1000000 + ((d[p + 2] << 16) | (d[p + 3] << 8) | d[p + 4])), (size = 5);
    else if (m === 0xd0) (v = (d[p + 1] << 24) >> 24), (size = 2);
    else if (m === 0xd1) (v = (((d[p + 1] << 8) | d[p + 2]) << 16) >> 16), (size = 3);
    else if (m === 0xd2) (v = (d[p + 1] << 24) | (d[p + 2] << 16) | (d[p + 3] << 8) | d[p + 4]), (size = 5);
    else return this._conv(r.value(depth));
    if (p + size > d.length || this.big || v < this.loN || v > this.hiN) throw UNUSUAL;
    r.pos = p + size;
    return v;
  }
  _conv(raw) {
    if (typeof raw !== 'number' && typeof raw !== 'bigint') {
      throw new CodecError(`invalid type: ${what(raw)}, expected ${this.width}`);
    }
    if (!this.big && typeof raw === 'number' && raw >= this.loN && raw <= this.hiN) return raw;
    const b = typeof raw === 'bigint' ? raw : BigInt(raw);
    if (b < this.lo || b > this.hi) throw new CodecError(`invalid value: integer \`${raw}\`, expected ${this.width}`);
    if (this.big) return b;
    // A value of the width that a JS number cannot hold exactly (beyond 2^53).
    throw new CodecError(
      `invalid value: integer \`${raw}\` is beyond JavaScript's safe integers (2^53 - 1), expected ${this.width}; declare it t.big.${this.width} to get a BigInt`,
    );
  }
  _json(v, out) {
    this.check(v);
    out.push(String(v));
  }
}

function describe(v) {
  if (v === null || v === undefined) return String(v);
  if (typeof v === 'object') return Array.isArray(v) ? 'an array' : 'an object';
  return `${typeof v} ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`;
}

class FloatSchema extends Schema {
  constructor(f32) {
    super(f32 ? 'f32' : 'f64');
    this.f32 = f32;
  }
  check(v) {
    if (typeof v === 'bigint') return Number(v);
    if (typeof v !== 'number') throw new CodecError(`invalid type: ${describe(v)}, expected ${this._name}`);
    return v;
  }
  _enc(w, v) {
    v = this.check(v);
    if (this.f32) writeF32(w, v);
    else writeF64(w, v);
  }
  _conv(raw) {
    let v;
    if (raw instanceof RawFloat) v = raw.v;
    else if (typeof raw === 'number' || typeof raw === 'bigint') v = Number(raw);
    else throw new CodecError(`invalid type: ${what(raw)}, expected ${this._name}`);
    return this.f32 ? Math.fround(v) : v;
  }
  _json(v, out) {
    out.push(floatJson(this.check(v), this.f32));
  }
}

class Simple extends Schema {
  constructor(name, test, expected, toJson = jsonStr) {
    super(name);
    this.test = test;
    this.expected = expected;
    this.toJson = toJson;
  }
  _accepts(v) {
    return this.test(v);
  }
  _enc(w, v) {
    if (!this.test(v)) throw new CodecError(`invalid type: ${describe(v)}, expected ${this.expected}`);
    if (typeof v === 'string') writeStr(w, v);
    else if (typeof v === 'boolean') w.u8(v ? 0xc3 : 0xc2);
    else w.u8(0xc0);
  }
  _conv(raw) {
    if (!this.test(raw)) throw new CodecError(`invalid type: ${what(raw)}, expected ${this.expected}`);
    return raw === undefined ? null : raw;
  }
  _read(r, depth) {
    const m = r.data[r.pos];
    if (m === 0xc3 || m === 0xc2 || m === 0xc0 || (m >= 0xa0 && m <= 0xbf)) return this._conv(r.value(depth));
    throw UNUSUAL;
  }
  _json(v, out) {
    if (!this.test(v)) throw new CodecError(`invalid type: ${describe(v)}, expected ${this.expected}`);
    out.push(v === null || v === undefined ? 'null' : this.toJson(v));
  }
}

class BytesSchema extends Schema {
  constructor() {
    super('bytes');
  }
  _enc(w, v) {
    if (!(v instanceof Uint8Array)) throw new CodecError(`invalid type: ${describe(v)}, expected bytes (a Uint8Array)`);
    writeBin(w, v);
  }
  _conv(raw) {
    if (raw instanceof Uint8Array) return raw;
    if (Array.isArray(raw) && raw.every((x) => typeof x === 'number' && x >= 0 && x < 256)) return Uint8Array.from(raw);
    throw new CodecError(`invalid type: ${what(raw)}, expected bytes`);
  }
  _json(v, out) {
    out.push(`[${Array.from(v).join(',')}]`);
  }
}

class AnySchema extends Schema {
  constructor() {
    super('any');
  }
  _enc(w, v, depth = 0) {
    if (depth > MAX_DEPTH) throw new CodecError('value nested too deeply');
    if (v === null || v === undefined) return w.u8(0xc0);
    if (typeof v === 'boolean') return w.u8(v ? 0xc3 : 0xc2);
    if (typeof v === 'bigint') return writeInt(w, v);
    if (typeof v === 'number') return Number.isInteger(v) && !Object.is(v, -0) ? writeInt(w, v) : writeF64(w, v);
    if (typeof v === 'string') return writeStr(w, v);
    if (v instanceof Uint8Array) return writeBin(w, v);
    if (v[SCHEMA]) return v[SCHEMA]._enc(w, v, depth);
    if (Array.isArray(v)) {
      arrayLen(w, v.length);
      for (const x of v) this._enc(w, x, depth + 1);
      return;
    }
    const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
    mapLen(w, entries.length);
    for (const [k, x] of entries) {
      this._enc(w, k, depth + 1);
      this._enc(w, x, depth + 1);
    }
  }
  _conv(raw, json, depth = 0) {
    if (depth > MAX_DEPTH) throw new CodecError('depth limit exceeded');
    if (raw instanceof RawFloat) return raw.v;
    if (Array.isArray(raw)) return raw.map((x) => this._conv(x, json, depth + 1));
    if (raw instanceof RawMap) {
      if (raw.pairs.every(([k]) => typeof k === 'string')) {
        const o = {};
        for (const [k, x] of raw.pairs) o[k] = this._conv(x, json, depth + 1);
        return o;
      }
      return new Map(raw.pairs.map(([k, x]) => [this._conv(k, json, depth + 1), this._conv(x, json, depth + 1)]));
    }
    return raw;
  }
  _json(v, out, depth = 0) {
    if (depth > MAX_DEPTH) throw new CodecError('value nested too deeply');
    if (v === null || v === undefined) out.push('null');
    else if (typeof v === 'boolean' || typeof v === 'bigint') out.push(String(v));
    else if (typeof v === 'number') out.push(Number.isInteger(v) && !Object.is(v, -0) ? String(v) : floatJson(v));
    else if (typeof v === 'string') out.push(jsonStr(v));
    else if (v instanceof Uint8Array) out.push(`[${Array.from(v).join(',')}]`);
    else if (v[SCHEMA]) v[SCHEMA]._json(v, out, depth);
    else if (Array.isArray(v)) {
      out.push('[');
      v.forEach((x, i) => {
        if (i) out.push(',');
        this._json(x, out, depth + 1);
      });
      out.push(']');
    } else {
      const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
      out.push('{');
      entries.forEach(([k, x], i) => {
        if (i) out.push(',');
        if (typeof k !== 'string' && !isInt(k)) throw new CodecError('JSON map keys must be strings or integers');
        out.push(jsonStr(String(k)), ':');
        this._json(x, out, depth + 1);
      });
      out.push('}');
    }
  }
}

class OptionSchema extends Schema {
  constructor(inner) {
    super(`option<${inner}>`);
    this.inner = resolveSchema(inner);
    this.optional = true;
  }
  _enc(w, v, depth = 0) {
    if (v === null || v === undefined) w.u8(0xc0);
    else this.inner._enc(w, v, depth);
  }
  _conv(raw, json, depth = 0) {
    return raw === null ? null : this.inner._conv(raw, json, depth);
  }
  _json(v, out, depth = 0) {
    if (v === null || v === undefined) out.push('null');
    else this.inner._json(v, out, depth);
  }
}

class ListSchema extends Schema {
  constructor(item) {
    super(`list<${item}>`);
    this.item = resolveSchema(item);
  }
  _enc(w, v, depth = 0) {
    if (!Array.isArray(v)) throw new CodecError(`invalid type: ${describe(v)}, expected ${this._name} (an array)`);
    arrayLen(w, v.length);
    for (const x of v) this.item._enc(w, x, depth + 1);
  }
  _conv(raw, json, depth = 0) {
    if (!Array.isArray(raw)) throw new CodecError(`invalid type: ${what(raw)}, expected a sequence`);
    return raw.map((x) => this.item._conv(x, json, depth + 1));
  }
  _json(v, out, depth = 0) {
    out.push('[');
    v.forEach((x, i) => {
      if (i) out.push(',');
      this.item._json(x, out, depth + 1);
    });
    out.push(']');
  }
}

class TupleSchema extends Schema {
  constructor(items) {
    super(`(${items.join(', ')})`);
    this.items = items.map(resolveSchema);
  }
  _enc(w, v, depth = 0) {
    if (!Array.isArray(v) || v.length !== this.items.length) {
      throw new CodecError(`invalid value: ${describe(v)}, expected a tuple of ${this.items.length}`);
    }
    arrayLen(w, v.length);
    this.items.forEach((s, i) => s._enc(w, v[i], depth + 1));
  }
  _conv(raw, json, depth = 0) {
    if (!Array.isArray(raw)) throw new CodecError(`invalid type: ${what(raw)}, expected a tuple`);
    if (raw.length !== this.items.length) {
      throw new CodecError(`invalid length ${raw.length}, expected a tuple of ${this.items.length}`);
    }
    return raw.map((x, i) => this.items[i]._conv(x, json, depth + 1));
  }
  _json(v, out, depth = 0) {
    out.push('[');
    this.items.forEach((s, i) => {
      if (i) out.push(',');
      s._json(v[i], out, depth + 1);
    });
    out.push(']');
  }
}

/** A map; values are plain objects (string keys) or `Map`s (any keys). */
class MapSchema extends Schema {
  constructor(key, value) {
    super(`map<${key}, ${value}>`);
    this.key = resolveSchema(key);
    this.value = resolveSchema(value);
  }
  entries(v) {
    if (v instanceof Map) return [...v.entries()];
    if (v && typeof v === 'object' && !Array.isArray(v)) return Object.entries(v);
    throw new CodecError(`invalid type: ${describe(v)}, expected ${this._name}`);
  }
  _enc(w, v, depth = 0) {
    const e = this.entries(v);
    mapLen(w, e.length);
    for (const [k, x] of e) {
      this.key._enc(w, k, depth + 1);
      this.value._enc(w, x, depth + 1);
    }
  }
  _conv(raw, json, depth = 0) {
    if (!(raw instanceof RawMap)) throw new CodecError(`invalid type: ${what(raw)}, expected a map`);
    const intKeys = this.key instanceof IntSchema;
    const pairs = raw.pairs.map(([k, x]) => {
      if (json && intKeys && typeof k === 'string') {
        if (!/^-?[0-9]+$/.test(k)) throw new CodecError(`invalid map key ${JSON.stringify(k)}, expected an integer`);
        k = small(BigInt(k));
      }
      return [this.key._conv(k, json, depth + 1), this.value._conv(x, json, depth + 1)];
    });
    if (pairs.every(([k]) => typeof k === 'string')) {
      const o = {};
      for (const [k, x] of pairs) o[k] = x;
      return o;
    }
    return new Map(pairs);
  }
  _json(v, out, depth = 0) {
    out.push('{');
    this.entries(v).forEach(([k, x], i) => {
      if (i) out.push(',');
      if (typeof k !== 'string' && !isInt(k)) throw new CodecError('JSON map keys must be strings or integers');
      out.push(jsonStr(String(k)), ':');
      this.value._json(x, out, depth + 1);
    });
    out.push('}');
  }
}

/** A unit struct (`struct Marker;`): an empty array on the wire, `null` in JS and JSON. */
class UnitStructSchema extends Schema {
  _enc(w, v) {
    if (v !== null && v !== undefined) throw new CodecError(`invalid type: ${describe(v)}, expected unit struct ${this._name} (null)`);
    w.u8(0x90);
  }
  _conv(raw) {
    if (raw === null || (Array.isArray(raw) && raw.length === 0)) return null;
    throw new CodecError(`invalid type: ${what(raw)}, expected unit struct ${this._name}`);
  }
  _json(v, out) {
    out.push('null');
  }
}

/** One field of a struct or struct variant. */
class Field {
  constructor(schema, { default: def, aliases = [] } = {}) {
    this.schema = schema;
    this.hasDefault = def !== undefined;
    this.default = def;
    this.aliases = aliases;
  }
  makeDefault() {
    return typeof this.default === 'function' ? this.default() : structuredCopy(this.default);
  }
}

function structuredCopy(v) {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(structuredCopy);
  if (v instanceof Uint8Array) return v.slice();
  const o = {};
  for (const [k, x] of Object.entries(v)) o[k] = structuredCopy(x);
  return o;
}

/** The fields of a struct: encoding, decoding (aliases, defaults, unknown fields skipped), JSON. */
class Fields {
  constructor(owner, spec) {
    this.owner = owner;
    this.list = [];
    this.byName = new Map();
    for (const [name, f] of Object.entries(spec ?? {})) {
      const field = f instanceof Field ? f : new Field(f);
      field.schema = resolveSchema(field.schema);
      field.name = name;
      field.key = (() => {
        const w = new Writer();
        writeStr(w, name);
        return w.finish();
      })();
      field.optional = field.schema instanceof OptionSchema;
      this.list.push(field);
      for (const n of [name, ...field.aliases]) {
        if (this.byName.has(n)) throw new TypeError(`${owner}: two fields are named ${n}`);
        this.byName.set(n, field);
      }
    }
  }
  value(v, f) {
    let x = v[f.name];
    if (x === undefined) {
      if (f.hasDefault) return f.makeDefault();
      if (f.optional) return null;
      throw new CodecError(`missing field \`${f.name}\` in ${this.owner}`);
    }
    return x;
  }
  enc(w, v, depth) {
    if (!v || typeof v !== 'object') throw new CodecError(`invalid type: ${describe(v)}, expected struct ${this.owner}`);
    const list = this.list;
    const n = list.length;
    mapLen(w, n);
    for (let i = 0; i < n; i++) {
      const f = list[i];
      w.bytes(f.key);
      const x = v[f.name];
      f.schema._enc(w, x === undefined ? this.value(v, f) : x, depth + 1);
    }
  }
  /**
   * The fast path of `conv` for MessagePack: every field, in declaration
   * order (as this codec and the Rust SDK write them), each key compared as
   * encoded bytes. Anything else (unknown, missing, reordered or aliased
   * fields, a struct written as an array) throws UNUSUAL.
   */
  read(r, depth, out) {
    const data = r.data;
    const list = this.list;
    const n = list.length;
    if (data[r.pos] !== (0x80 | n) || n > 15) throw UNUSUAL;
    let pos = r.pos + 1;
    for (let i = 0; i < n; i++) {
      const f = list[i];
      if (!bytesAt(data, pos, f.key)) throw UNUSUAL;
      r.pos = pos + f.key.length;
      out[f.name] = f.schema._read(r, depth + 1);
      pos = r.pos;
    }
    return out;
  }
  conv(raw, json, depth, out) {
    // `out` holds no field yet (a fresh object, or a variant's `type` only).
    const seen = (name) => Object.prototype.hasOwnProperty.call(out, name);
    if (raw instanceof RawMap) {
      for (const [k, x] of raw.pairs) {
        const f = typeof k === 'string' ? this.byName.get(k) : undefined;
        if (!f) continue; // an unknown field: skipped
        if (seen(f.name)) throw new CodecError(`duplicate field \`${f.name}\``);
        out[f.name] = f.schema._conv(x, json, depth + 1);
      }
    } else if (Array.isArray(raw) && !json) {
      // A struct written as an array of its fields (rmp-serde accepts it).
      if (raw.length > this.list.length) {
        throw new CodecError(`invalid length ${raw.length}, expected struct ${this.owner} with ${this.list.length} elements`);
      }
      raw.forEach((x, i) => {
        const f = this.list[i];
        out[f.name] = f.schema._conv(x, json, depth + 1);
      });
    } else {
      throw new CodecError(`invalid type: ${what(raw)}, expected struct ${this.owner}`);
    }
    for (const f of this.list) {
      if (seen(f.name)) continue;
      if (f.hasDefault) out[f.name] = f.makeDefault();
      else if (f.optional) out[f.name] = null;
      else throw new CodecError(`missing field \`${f.name}\``);
    }
    return out;
  }
  json(v, out, depth) {
    out.push('{');
    this.list.forEach((f, i) => {
      if (i) out.push(',');
      out.push(jsonStr(f.name), ':');
      f.schema._json(this.value(v, f), out, depth + 1);
    });
    out.push('}');
  }
}

class StructSchema extends Schema {
  constructor(name, spec) {
    super(name);
    this.fields = new Fields(name, spec);
  }
  _enc(w, v, depth = 0) {
    this.fields.enc(w, v, depth);
  }
  _conv(raw, json, depth = 0) {
    return this.fields.conv(raw, json, depth, {});
  }
  _read(r, depth) {
    if (depth > MAX_DEPTH) throw UNUSUAL;
    return this.fields.read(r, depth, {});
  }
  _json(v, out, depth = 0) {
    this.fields.json(v, out, depth);
  }
  /** A value with every field at its default (a missing option is null). */
  defaults() {
    const o = {};
    for (const f of this.fields.list) {
      if (f.hasDefault) o[f.name] = f.makeDefault();
      else if (f.optional) o[f.name] = null;
      else if (f.schema instanceof IntSchema || f.schema instanceof FloatSchema) o[f.name] = 0;
      else if (f.schema === t.string) o[f.name] = '';
      else if (f.schema === t.bool) o[f.name] = false;
      else if (f.schema instanceof ListSchema) o[f.name] = [];
      else if (f.schema instanceof MapSchema) o[f.name] = {};
      else if (f.schema instanceof StructSchema) o[f.name] = f.schema.defaults();
      else throw new CodecError(`${this._name}.${f.name} has no default: give it one, or define initialState`);
    }
    return o;
  }
}

/** How a variant is declared, with its options (wire name, aliases, legacy). */
class VariantSpec {
  constructor(payload, opts = {}) {
    this.payload = payload;
    this.opts = opts;
  }
}

/** A newtype variant payload `Name(x)`: the value is `{ type, value }`. */
class NewtypeSpec {
  constructor(inner) {
    this.inner = inner;
  }
}

class Variant {
  constructor(union, key, spec) {
    const vs = spec instanceof VariantSpec ? spec : new VariantSpec(spec);
    const { name = key, aliases = [], legacy = false, shape } = vs.opts;
    let p = vs.payload;
    this.union = union;
    this.type = key;
    this.name = name;
    this.aliases = aliases;
    this.legacy = legacy;
    if (p === null || p === undefined) this.shape = 'unit';
    else if (p instanceof NewtypeSpec) {
      this.shape = 'newtype';
      this.inner = resolveSchema(p.inner);
    } else if (p instanceof TupleSchema) {
      this.shape = 'tuple';
      this.inner = p;
    } else if (p instanceof Schema) {
      throw new TypeError(`${union._name}.${key}: a variant's payload is null, an object of fields, t.newtype(S) or t.tuple(...)`);
    } else {
      this.fields = new Fields(`${union._name}::${key}`, p);
      this.shape = shape ?? (this.fields.list.length ? 'struct' : 'unit');
      if (this.fields.byName.has('type')) throw new TypeError(`${union._name}.${key}: a field cannot be named \`type\``);
    }
    const w = new Writer();
    writeStr(w, name);
    this.tag = w.finish();
  }
  /** Builds a value of this variant. */
  make(payload) {
    let v;
    if (this.shape === 'unit') v = { type: this.type };
    else if (this.shape === 'struct') v = { type: this.type, ...(payload ?? {}) };
    else v = { type: this.type, value: payload };
    Object.defineProperty(v, SCHEMA, { value: this.union, enumerable: false });
    return v;
  }
  enc(w, v, depth) {
    if (this.shape === 'unit') return writeStr(w, this.name);
    w.u8(0x81);
    w.bytes(this.tag);
    if (this.shape === 'struct') this.fields.enc(w, v, depth + 1);
    else this.inner._enc(w, v.value, depth + 1);
  }
  /** The fast path of `conv`: the payload read from `r` (after the tag). */
  read(r, depth) {
    if (this.shape === 'unit') {
      if (r.data[r.pos] !== 0xc0) throw UNUSUAL;
      r.pos++;
      return this.make();
    }
    if (this.shape === 'struct') return this.fields.read(r, depth + 1, this.make({}));
    return this.make(this.inner._read(r, depth + 1));
  }
  conv(payload, isUnit, json, depth) {
    if (this.shape === 'unit') {
      if (payload !== null) throw new CodecError(`invalid type: ${what(payload)}, expected unit variant ${this.name}`);
      return this.make();
    }
    if (isUnit) throw new CodecError(`invalid type: unit variant, expected ${this.shape} variant ${this.name}`);
    if (this.shape === 'struct') {
      const v = this.make({});
      return this.fields.conv(payload, json, depth + 1, v);
    }
    return this.make(this.inner._conv(payload, json, depth + 1));
  }
  json(v, out, depth) {
    if (this.shape === 'unit') return out.push(jsonStr(this.name));
    out.push('{', jsonStr(this.name), ':');
    if (this.shape === 'struct') this.fields.json(v, out, depth + 1);
    else this.inner._json(v.value, out, depth + 1);
    out.push('}');
  }
}

/**
 * An externally tagged union (a Rust enum). Its values are objects with a
 * `type` (the variant's key); `Union.Key(payload)` builds one.
 */
class UnionSchema extends Schema {
  constructor(name, spec) {
    super(name);
    this._variants = new Map(); // key → Variant
    this._byWire = new Map(); // wire name or alias → Variant
    for (const [key, s] of Object.entries(spec)) {
      const v = new Variant(this, key, s);
      this._variants.set(key, v);
      for (const n of [v.name, ...v.aliases]) {
        if (this._byWire.has(n)) throw new TypeError(`${name}: two variants are named ${n}`);
        this._byWire.set(n, v);
      }
      if (key in this) throw new TypeError(`${name}: a variant cannot be named ${key}`);
      this[key] = (payload) => v.make(payload);
    }
    // [encoded wire name or alias, variant], for the fast path's byte compares.
    this._tags = [];
    for (const v of this._variants.values()) {
      for (const n of [v.name, ...v.aliases]) {
        const w = new Writer();
        writeStr(w, n);
        this._tags.push([w.finish(), v]);
      }
    }
  }
  /** The variant whose encoded name is at `r.pos` (moved past it), or UNUSUAL. */
  _tagAt(r) {
    const tags = this._tags;
    for (let i = 0; i < tags.length; i++) {
      const tag = tags[i][0];
      if (bytesAt(r.data, r.pos, tag)) {
        r.pos += tag.length;
        return tags[i][1];
      }
    }
    throw UNUSUAL;
  }
  _read(r, depth) {
    if (depth > MAX_DEPTH) throw UNUSUAL;
    if (r.data[r.pos] === 0x81) {
      r.pos++;
      return this._tagAt(r).read(r, depth);
    }
    const v = this._tagAt(r);
    if (v.shape !== 'unit') throw UNUSUAL;
    return v.make();
  }
  variant(v) {
    const key = v && typeof v === 'object' ? v.type : undefined;
    const found = this._variants.get(key);
    if (!found) {
      throw new CodecError(
        `${describe(v)}${key !== undefined ? ` of type ${JSON.stringify(key)}` : ''} is not a variant of ${this._name} (expected one of ${[...this._variants.keys()].join(', ')})`,
      );
    }
    return found;
  }
  /** Whether `v` is a legacy variant (to be upcast before use). */
  isLegacy(v) {
    return this._variants.get(v?.type)?.legacy === true;
  }
  _enc(w, v, depth = 0) {
    this.variant(v).enc(w, v, depth);
  }
  _conv(raw, json, depth = 0) {
    let name;
    let payload = null;
    let isUnit = false;
    if (typeof raw === 'string') {
      name = raw;
      isUnit = true;
    } else if (raw instanceof RawMap) {
      if (raw.pairs.length !== 1) {
        throw new CodecError(`invalid length ${raw.pairs.length}, expected a one-entry map for enum ${this._name}`);
      }
      [name, payload] = raw.pairs[0];
      if (typeof name !== 'string') throw new CodecError(`invalid type: ${what(name)}, expected a variant name of ${this._name}`);
    } else {
      throw new CodecError(`invalid type: ${what(raw)}, expected enum ${this._name}`);
    }
    const v = this._byWire.get(name);
    if (!v) {
      const names = [...this._variants.values()].map((x) => `\`${x.name}\``).join(', ');
      throw new CodecError(`unknown variant \`${name}\`, expected one of ${names}`);
    }
    return v.conv(payload, isUnit, json, depth);
  }
  _json(v, out, depth = 0) {
    this.variant(v).json(v, out, depth);
  }
}

/** `#[serde(untagged)]`: the content of the first alternative that fits, no name. */
class UntaggedSchema extends Schema {
  constructor(alts) {
    super(alts.join(' | '));
    this.alts = alts.map(resolveSchema);
  }
  pick(v) {
    for (const a of this.alts) {
      if (a._accepts) {
        if (a._accepts(v)) return a;
        continue;
      }
      try {
        a._enc(new Writer(), v, 0);
        return a;
      } catch (e) {
        if (!(e instanceof CodecError)) throw e;
      }
    }
    throw new CodecError(`${describe(v)} is none of ${this._name}`);
  }
  _enc(w, v, depth = 0) {
    this.pick(v)._enc(w, v, depth);
  }
  _conv(raw, json, depth = 0) {
    for (const a of this.alts) {
      try {
        return a._conv(raw, json, depth);
      } catch (e) {
        if (!(e instanceof CodecError)) throw e;
      }
    }
    throw new CodecError(`data did not match any variant of untagged enum ${this._name}`);
  }
  _json(v, out, depth = 0) {
    this.pick(v)._json(v, out, depth);
  }
}

/** A schema defined later (for recursive types): `t.lazy(() => Tree)`. */
class LazySchema extends Schema {
  constructor(f) {
    super('lazy');
    this.f = f;
  }
  get target() {
    return resolveSchema(this.f());
  }
  _enc(w, v, depth = 0) {
    if (depth > MAX_DEPTH) throw new CodecError('value nested too deeply');
    this.target._enc(w, v, depth);
  }
  _conv(raw, json, depth = 0) {
    if (depth > MAX_DEPTH) throw new CodecError('depth limit exceeded');
    return this.target._conv(raw, json, depth);
  }
  _json(v, out, depth = 0) {
    if (depth > MAX_DEPTH) throw new CodecError('value nested too deeply');
    this.target._json(v, out, depth);
  }
}

function resolveSchema(s) {
  if (s instanceof Schema) return s;
  throw new TypeError(`not a codec schema: ${describe(s)} (use t.i64, t.string, t.struct(...), ...)`);
}

const int = (name, lo, hi, big = false) => new IntSchema(name, lo, hi, big);

/** The schema constructors. */
export const t = Object.freeze({
  i8: int('i8', -(2n ** 7n), 2n ** 7n - 1n),
  i16: int('i16', -(2n ** 15n), 2n ** 15n - 1n),
  i32: int('i32', -(2n ** 31n), 2n ** 31n - 1n),
  i64: int('i64', I64_MIN, 2n ** 63n - 1n),
  u8: int('u8', 0n, 2n ** 8n - 1n),
  u16: int('u16', 0n, 2n ** 16n - 1n),
  u32: int('u32', 0n, 2n ** 32n - 1n),
  u64: int('u64', 0n, U64_MAX),
  /** 64-bit integers decoded as BigInts, for values beyond 2^53 (the bytes are the same). */
  big: Object.freeze({ i64: int('i64', I64_MIN, 2n ** 63n - 1n, true), u64: int('u64', 0n, U64_MAX, true) }),
  f64: new FloatSchema(false),
  f32: new FloatSchema(true),
  bool: new Simple('bool', (v) => typeof v === 'boolean', 'a boolean', String),
  string: new Simple('string', (v) => typeof v === 'string', 'a string'),
  unit: new Simple('unit', (v) => v === null || v === undefined, 'unit (null)'),
  bytes: new BytesSchema(),
  any: new AnySchema(),
  option: (s) => new OptionSchema(s),
  list: (s) => new ListSchema(s),
  tuple: (...items) => new TupleSchema(items),
  map: (k, v) => new MapSchema(k, v),
  struct: (name, fields) => new StructSchema(name, fields),
  unitStruct: (name) => new UnitStructSchema(name),
  union: (name, variants) => new UnionSchema(name, variants),
  untagged: (...alts) => new UntaggedSchema(alts),
  lazy: (f) => new LazySchema(f),
  /** A field with options: `t.field(t.bool, { default: false, aliases: ['old_name'] })`. */
  field: (schema, opts) => new Field(schema, opts),
  /** A variant with options: `t.variant({ amount: t.i64 }, { name, aliases, legacy })`. */
  variant: (payload, opts) => new VariantSpec(payload, opts),
  /** A newtype variant payload `Name(x)`. */
  newtype: (inner) => new NewtypeSpec(inner),
});

export function isSchema(s) {
  return s instanceof Schema;
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/** Encodes `value` as a `schema` (default `t.any`; union values built by constructors carry their schema). */
let scratch = new Writer();

export function encode(value, schema = t.any) {
  // One writer reused across calls (its buffer grows once); a nested call
  // (a schema calling encode) gets its own.
  const w = scratch ?? new Writer();
  scratch = null;
  w.len = 0;
  try {
    resolveSchema(schema)._enc(w, value, 0);
    return w.finish();
  } catch (e) {
    if (e instanceof RangeError) throw new CodecError('value nested too deeply');
    throw e;
  } finally {
    if (w.buf.length <= 1 << 20) scratch = w;
    else scratch = new Writer(); // do not keep a huge buffer alive
  }
}

/** Decodes `bytes` as a `schema` (default `t.any`). Bytes after the value are ignored, as in Rust. */
export function decode(bytes, schema = t.any) {
  if (!(bytes instanceof Uint8Array)) throw new CodecError('decode needs a Uint8Array');
  const s = resolveSchema(schema);
  try {
    return s._read(new Reader(bytes), 0);
  } catch {
    // Unusual bytes, or an error: the general path below decides.
  }
  try {
    return s._conv(new Reader(bytes).value(), false, 0);
  } catch (e) {
    if (e instanceof RangeError) throw new CodecError('depth limit exceeded');
    throw e;
  }
}

/**
 * The two decoding paths of `decode`, apart (for the SDK's tests): `fast`
 * throws on bytes it leaves to `general`; both must agree where `fast` answers.
 */
export const decodePaths = Object.freeze({
  fast: (bytes, schema) => resolveSchema(schema)._read(new Reader(bytes), 0),
  general: (bytes, schema) => resolveSchema(schema)._conv(new Reader(bytes).value(), false, 0),
});

/** `value` as compact JSON text, as serde_json writes the same Rust value. */
export function toJson(value, schema = t.any) {
  const out = [];
  resolveSchema(schema)._json(value, out, 0);
  return out.join('');
}

/** JSON text → a value of `schema` (`'{"Deposit":{"amount":100}}'` → `{ type: 'Deposit', amount: 100 }`). */
export function fromJson(text, schema) {
  return resolveSchema(schema)._conv(parseJson(text), true, 0);
}
