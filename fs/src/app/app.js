// Zennet's browser app: downloads a file from one or more nodes' HTTP file
// servers with no backend of its own. Every part is checked against its
// SHA-1 in the metainfo before it is used, encrypted parts are decrypted
// with WebCrypto (the layout of fs/src/crypt.rs), a failed or bad part is
// fetched from another node, and the assembled file is offered for saving.
// The link's fragment names the file, its key and the nodes; the format is
// in fs/src/app/mod.rs.
'use strict';

const PER_NODE = 4; // requests in flight per node
const TIMEOUT_MS = 30000; // a request slower than this counts as failed
const STRIKES = 3; // failed requests in a row before a node is dropped
const TAG = 16; // AES-GCM tag bytes at the end of each encrypted part
const SEGMENT = 256 * 1024; // an encrypted file's part length
const MAGIC = [0x5a, 0x45, 0x4e, 0x43]; // "ZENC", the encrypted header
const HASH_STEP = 4 << 20; // bytes read back at a time for the SHA-256

/** A reason shown to the user as it is. */
class Failure extends Error {}

const $ = (id) => document.getElementById(id);
const utf8 = new TextDecoder('utf-8', { fatal: true });
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const mib = (n) => (n / 1048576).toFixed(1);

function unhex(s) {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function sha1(buf) {
  return new Uint8Array(await crypto.subtle.digest('SHA-1', buf));
}

// ---- The link -----------------------------------------------------------

/** `#ID[:KEY][&node=URL]...[&save]` → { id, key, nodes, save }. */
function parseLink(loc) {
  const fields = loc.hash.replace(/^#/, '').split('&').filter(Boolean);
  if (fields.length === 0) {
    throw new Failure('No file in the link: open /app#ID, or /app#ID:KEY for an encrypted file ' +
      '(zennet fs link ID prints one).');
  }
  const [id, key, ...rest] = fields[0].split(':');
  if (!/^[0-9a-fA-F]{40}$/.test(id) || rest.length > 0) {
    throw new Failure(`"${fields[0].slice(0, 120)}" is not ID or ID:KEY (ID: 40 hex digits).`);
  }
  if (key !== undefined && !/^[0-9a-fA-F]{64}$/.test(key)) {
    throw new Failure('The key in the link is not 64 hex digits.');
  }
  const own = loc.origin + loc.pathname.replace(/\/app\/?$/, '');
  const nodes = [own];
  let save = false;
  for (const f of fields.slice(1)) {
    if (f === 'save') {
      save = true;
    } else if (f.startsWith('node=')) {
      const url = nodeUrl(f.slice(5));
      if (!nodes.includes(url)) nodes.push(url);
    } else {
      throw new Failure(`Unknown field "${f.slice(0, 80)}" in the link (node=URL and save are known).`);
    }
  }
  return { id: id.toLowerCase(), key: key && unhex(key), nodes, save };
}

function nodeUrl(raw) {
  let u;
  try {
    u = new URL(decodeURIComponent(raw));
  } catch {
    u = null;
  }
  if (!u || !['http:', 'https:'].includes(u.protocol) || u.search || u.hash || u.username || u.password) {
    throw new Failure(`node=${raw.slice(0, 80)} is not a node's URL (http://host:port).`);
  }
  return u.origin + u.pathname.replace(/\/+$/, '');
}

/**
 * The page's policy lets it connect to any http(s) node, since the nodes
 * are named in the fragment; a <meta> policy only ever adds restrictions,
 * so this narrows it to the nodes of this link before anything is fetched.
 */
function narrowConnections(nodes) {
  const meta = document.createElement('meta');
  meta.httpEquiv = 'Content-Security-Policy';
  const origins = new Set(nodes.map((n) => new URL(n).origin));
  meta.content = `connect-src ${[...origins].join(' ')}`;
  document.head.appendChild(meta);
}

// ---- The metainfo: a BEP 3 info dict ------------------------------------

/** Bencode → numbers, Uint8Arrays, arrays and Maps (string keys). */
function bdecode(bytes) {
  let i = 0;
  const bad = (why) => {
    throw new Failure(`The metainfo is not valid bencode (${why} at byte ${i}).`);
  };
  const number = (end, pattern) => {
    if (end - i > 20) bad('a number too long');
    const s = String.fromCharCode(...bytes.subarray(i, end));
    if (!pattern.test(s) || !Number.isSafeInteger(Number(s))) bad('a bad number');
    return Number(s);
  };
  const next = (depth) => {
    if (depth > 32) bad('nesting too deep');
    const c = bytes[i];
    if (c === 0x69) { // i<n>e
      const end = bytes.indexOf(0x65, i);
      if (end < 0) bad('an unterminated integer');
      i++;
      const n = number(end, /^(0|-?[1-9][0-9]*)$/);
      i = end + 1;
      return n;
    }
    if (c === 0x6c || c === 0x64) { // l...e, d...e
      i++;
      const list = [];
      while (bytes[i] !== 0x65) {
        if (i >= bytes.length) bad('an unterminated list');
        list.push(next(depth + 1));
      }
      i++;
      if (c === 0x6c) return list;
      if (list.length % 2) bad('a key without a value');
      const dict = new Map();
      for (let k = 0; k < list.length; k += 2) {
        if (!(list[k] instanceof Uint8Array)) bad('a key that is not a string');
        dict.set(text(list[k]), list[k + 1]);
      }
      return dict;
    }
    if (c >= 0x30 && c <= 0x39) { // <len>:<bytes>
      const colon = bytes.indexOf(0x3a, i);
      if (colon < 0) bad('a string without a length');
      const len = number(colon, /^(0|[1-9][0-9]*)$/);
      const start = colon + 1;
      if (start + len > bytes.length) bad('a string past the end');
      i = start + len;
      return bytes.subarray(start, i);
    }
    return bad('an unknown type');
  };
  const value = next(0);
  if (i !== bytes.length) bad('bytes after the end');
  return value;
}

function text(bytes) {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new Failure('The metainfo has a string that is not UTF-8.');
  }
}

/** A path component a file may be saved under (the store's rule). */
function safeName(s) {
  return s !== '' && s !== '.' && s !== '..' && !/[/\\\0]/.test(s);
}

/** The layout of the content: name, parts, files and where each sits. */
function parseInfo(bytes) {
  const info = bdecode(bytes);
  const bad = (why) => new Failure(`The metainfo is not a usable info dictionary: ${why}.`);
  if (!(info instanceof Map)) throw bad('not a dictionary');
  const field = (map, key, type) => {
    const v = map.get(key);
    if (type === 'bytes' ? !(v instanceof Uint8Array) : typeof v !== 'number' || v < 0) {
      throw bad(`no ${key}`);
    }
    return v;
  };
  const name = text(field(info, 'name', 'bytes'));
  const pieceLength = field(info, 'piece length', 'number');
  const pieces = field(info, 'pieces', 'bytes');
  if (!safeName(name)) throw bad(`the name "${name}" is not a file name`);
  if (pieceLength === 0 || pieces.length % 20) throw bad('bad parts');
  let files;
  if (info.has('length') && info.has('files')) {
    throw bad('both length and files');
  } else if (info.has('length')) {
    files = [{ path: [], length: field(info, 'length', 'number') }];
  } else if (Array.isArray(info.get('files')) && info.get('files').length > 0) {
    files = info.get('files').map((f) => {
      if (!(f instanceof Map) || !Array.isArray(f.get('path')) || f.get('path').length === 0) {
        throw bad('a file without a path');
      }
      const path = f.get('path').map((c) => (c instanceof Uint8Array ? text(c) : ''));
      if (!path.every(safeName)) throw bad(`an unsafe path ${path.join('/')}`);
      return { path, length: field(f, 'length', 'number') };
    });
  } else {
    throw bad('neither length nor files');
  }
  let offset = 0;
  for (const f of files) {
    f.offset = offset;
    offset += f.length;
  }
  const count = pieces.length / 20;
  if (count !== Math.ceil(offset / pieceLength)) throw bad(`${count} parts listed for ${offset} bytes`);
  const dir = !info.has('length');
  // An encrypted file is named by its salt (crypt.rs: HEX.zenc); the
  // nonce of part i is the salt's first 4 bytes, then i as a u64.
  const encrypted = !dir && /^[0-9a-f]{32}\.zenc$/.test(name);
  return {
    name, pieceLength, pieces, files, dir, count, length: offset, encrypted,
    prefix: encrypted ? unhex(name.slice(0, 8)) : null,
  };
}

function partLength(meta, i) {
  return Math.min(meta.pieceLength, meta.length - i * meta.pieceLength);
}

function nonce(prefix, index) {
  const iv = new Uint8Array(12);
  iv.set(prefix, 0);
  new DataView(iv.buffer).setUint32(8, index); // bytes 4..8 stay 0: a u32 index as u64
  return iv;
}

/** The header at the start of decrypted part 0 (crypt.rs `header`). */
function parseHeader(plain, meta) {
  const bad = new Failure('The file decrypted, but its header is damaged: it was not made by zennet fs add --encrypt.');
  if (plain.length < 7 || !MAGIC.every((b, i) => plain[i] === b) || plain[4] !== 1) throw bad;
  const n = (plain[5] << 8) | plain[6];
  const start = 7 + n + 8;
  if (plain.length < start) throw bad;
  let name;
  try {
    name = utf8.decode(plain.subarray(7, 7 + n));
  } catch {
    throw bad;
  }
  const length = Number(new DataView(plain.buffer, plain.byteOffset + 7 + n, 8).getBigUint64(0));
  const plainTotal = meta.length - meta.count * TAG;
  if (!safeName(name) || !Number.isSafeInteger(length) || start + length > plainTotal) throw bad;
  return { name, length, start };
}

// ---- SHA-256 of the assembled file --------------------------------------

// WebCrypto hashes only a whole buffer; the file is a Blob of parts that
// is never one buffer, so this is a streaming SHA-256 (FIPS 180-4).
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

class Sha256 {
  constructor() {
    this.h = new Uint32Array([
      0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]);
    this.w = new Uint32Array(64);
    this.buf = new Uint8Array(64);
    this.fill = 0;
    this.length = 0;
  }

  update(data) {
    let p = 0;
    this.length += data.length;
    if (this.fill > 0) {
      p = Math.min(64 - this.fill, data.length);
      this.buf.set(data.subarray(0, p), this.fill);
      this.fill += p;
      if (this.fill < 64) return;
      this.block(this.buf, 0);
      this.fill = 0;
    }
    for (; p + 64 <= data.length; p += 64) this.block(data, p);
    this.buf.set(data.subarray(p));
    this.fill = data.length - p;
  }

  hex() {
    const length = this.length;
    const tail = new Uint8Array(this.fill < 56 ? 64 - this.fill : 128 - this.fill);
    tail[0] = 0x80;
    const v = new DataView(tail.buffer);
    v.setUint32(tail.length - 8, Math.floor(length / 0x20000000)); // bits, high word
    v.setUint32(tail.length - 4, (length % 0x20000000) * 8); // bits, low word
    this.update(tail);
    return Array.from(this.h, (x) => x.toString(16).padStart(8, '0')).join('');
  }

  block(d, p) {
    const w = this.w;
    for (let t = 0; t < 16; t++, p += 4) {
      w[t] = (d[p] << 24) | (d[p + 1] << 16) | (d[p + 2] << 8) | d[p + 3];
    }
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15];
      const y = w[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    let [a, b, c, d0, e, f, g, h] = this.h;
    for (let t = 0; t < 64; t++) {
      const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + s1 + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
      const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g;
      g = f;
      f = e;
      e = (d0 + t1) | 0;
      d0 = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    const s = this.h;
    s[0] += a; s[1] += b; s[2] += c; s[3] += d0; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
  }
}

async function sha256OfBlob(blob) {
  const s = new Sha256();
  for (let pos = 0; pos < blob.size; pos += HASH_STEP) {
    s.update(new Uint8Array(await blob.slice(pos, pos + HASH_STEP).arrayBuffer()));
  }
  return s.hex();
}

// ---- The download -------------------------------------------------------

class Download {
  constructor(link) {
    this.link = link;
    this.id = link.id;
    this.nodes = link.nodes.map((url) => ({
      url, parts: 0, bytes: 0, bad: 0, strikes: 0, dropped: null, lacks: new Set(), inflight: 0, row: null,
    }));
    this.controllers = new Set();
    this.failed = null;
    this.got = 0;
    this.held = 0;
  }

  async run() {
    const started = performance.now();
    this.showNodes();
    state('working', 'Fetching the metainfo…');
    const meta = await this.metainfo();
    this.meta = meta;
    this.showAbout();
    if (meta.encrypted && !this.link.key) {
      throw new Failure('This file is encrypted: the link needs its key (#ID:KEY).');
    }
    if (!meta.encrypted && this.link.key) {
      throw new Failure('The link carries a key, but this file is not encrypted: check the link.');
    }
    if (meta.encrypted) {
      if (meta.pieceLength !== SEGMENT || meta.count === 0) {
        throw new Failure('The metainfo is named as encrypted but has no 256 KiB parts.');
      }
      this.key = await crypto.subtle.importKey('raw', this.link.key, 'AES-GCM', false, ['decrypt']);
    }
    this.parts = new Array(meta.count);
    this.started = performance.now();
    if (meta.count > 0) {
      // Part 0 first: it holds the header, and a wrong key shows before
      // the rest is fetched.
      state('working', meta.encrypted ? 'Checking the key on the first part…' : 'Downloading…');
      await this.fetchAll([0]);
      if (this.header) {
        $('file-name').textContent = this.header.name;
        $('file-size').textContent = `${this.header.length} bytes (${meta.length} encrypted)`;
      }
      state('working', `Downloading from ${this.live().length} node(s)…`);
      await this.fetchAll(Array.from({ length: meta.count - 1 }, (_, k) => k + 1));
    }
    const files = this.assemble();
    this.offer(files);
    if (this.link.save) files.forEach((f) => f.anchor.click());
    state('working', 'Computing SHA-256…');
    for (const f of files) {
      f.hashCell.textContent = await sha256OfBlob(f.blob);
    }
    const used = this.nodes.filter((n) => n.parts > 0).length;
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    state('done', `Done: ${meta.count} parts from ${used} node(s) in ${secs} s, every part verified` +
      `${meta.encrypted ? ' and decrypted' : ''}.`);
  }

  live() {
    return this.nodes.filter((n) => !n.dropped);
  }

  /** The metainfo from every node at once; each must hash to the id. */
  async metainfo() {
    const found = await Promise.all(this.nodes.map(async (node) => {
      let r;
      try {
        r = await this.get(node, `/metainfo/${this.id}`);
      } catch (e) {
        this.drop(node, reason(e));
        return null;
      }
      if (!r.ok) {
        this.drop(node, r.status === 404 ? 'does not hold this file' : `metainfo: ${r.error}`);
        return null;
      }
      const bytes = new Uint8Array(r.body);
      if (hex(await sha1(bytes)) !== this.id) {
        this.drop(node, 'sent a metainfo that does not hash to the file id');
        return null;
      }
      return bytes;
    }));
    const bytes = found.find(Boolean);
    if (!bytes) throw new Failure(`No node has this file: ${this.whyNot()}`);
    return parseInfo(bytes);
  }

  /** GET with a timeout over the body too; the body read whole. */
  async get(node, path) {
    const ctrl = new AbortController();
    this.controllers.add(ctrl);
    const timer = setTimeout(() => ctrl.abort(new Failure(`timed out after ${TIMEOUT_MS / 1000} s`)), TIMEOUT_MS);
    try {
      const r = await fetch(node.url + path, {
        signal: ctrl.signal, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
      });
      if (r.ok) return { ok: true, status: r.status, body: await r.arrayBuffer() };
      const body = await r.text().catch(() => '');
      return { ok: false, status: r.status, error: `HTTP ${r.status} ${body.split('\n')[0].slice(0, 200)}`.trim() };
    } finally {
      clearTimeout(timer);
      this.controllers.delete(ctrl);
    }
  }

  /** Fetches `indexes` over every live node; resolves when all are held. */
  fetchAll(indexes) {
    this.queue = indexes;
    this.head = 0;
    this.retry = [];
    this.left = indexes.length;
    return new Promise((resolve, reject) => {
      this.settle = { resolve, reject };
      this.pump();
    });
  }

  /** Starts requests up to each node's limit; notices the end or a dead end. */
  pump() {
    if (this.failed) return;
    if (this.left === 0) {
      this.settle.resolve();
      return;
    }
    for (const node of this.live()) {
      while (node.inflight < PER_NODE && !node.dropped) {
        const i = this.take(node);
        if (i === undefined) break;
        node.inflight++;
        this.fetchPart(node, i)
          .catch((e) => this.fail(e))
          .finally(() => {
            node.inflight--;
            this.pump();
          });
      }
    }
    if (this.nodes.some((n) => n.inflight > 0)) return;
    const live = this.live();
    const orphan = this.retry.find((i) => !live.some((n) => !n.lacks.has(i)));
    if (live.length === 0 || orphan !== undefined) {
      this.fail(new Failure(live.length === 0
        ? `Every node failed: ${this.whyNot()}`
        : `No node holds part ${orphan}: ${this.whyNot()}`));
    }
  }

  /** The next part for `node`: a retried one first, then in order. */
  take(node) {
    const r = this.retry.findIndex((i) => !node.lacks.has(i));
    if (r >= 0) return this.retry.splice(r, 1)[0];
    while (this.head < this.queue.length) {
      const i = this.queue[this.head++];
      if (!node.lacks.has(i)) return i;
      this.retry.push(i);
    }
    return undefined;
  }

  async fetchPart(node, i) {
    const meta = this.meta;
    let r;
    try {
      r = await this.get(node, `/file/${this.id}/chunk/${i}`);
    } catch (e) {
      if (!this.failed) this.strike(node, i, reason(e));
      return;
    }
    if (this.failed) return;
    if (r.status === 404) {
      node.lacks.add(i);
      this.retry.push(i);
      return;
    }
    if (r.status === 402) {
      this.drop(node, 'asks for payment (its HTTP serving is paid)');
      this.retry.push(i);
      return;
    }
    if (!r.ok) {
      this.strike(node, i, r.error);
      return;
    }
    const hash = await sha1(r.body);
    if (r.body.byteLength !== partLength(meta, i) || !equal(hash, meta.pieces.subarray(20 * i, 20 * i + 20))) {
      node.bad++;
      this.drop(node, `sent a bad part (${i}): its SHA-1 does not match the metainfo`);
      this.retry.push(i);
      return;
    }
    let plain = r.body;
    if (meta.encrypted) {
      try {
        plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: nonce(meta.prefix, i) }, this.key, r.body);
      } catch {
        // The part is intact (its SHA-1 matched): the key is what is wrong.
        throw new Failure(i === 0
          ? 'Wrong key: the file\'s first part is intact (its SHA-1 matches) but does not decrypt with the key in the link.'
          : `Part ${i} is intact but does not decrypt with this key: the file was not made by zennet fs add --encrypt.`);
      }
      if (i === 0) this.header = parseHeader(new Uint8Array(plain), meta);
    }
    if (this.failed) return;
    node.strikes = 0;
    node.parts++;
    node.bytes += r.body.byteLength;
    // One Blob per part, so the browser may keep them out of the heap.
    this.parts[i] = new Blob([plain]);
    this.got += r.body.byteLength;
    this.held++;
    this.left--;
    this.showNode(node);
    this.showProgress();
  }

  strike(node, i, why) {
    this.retry.push(i);
    node.strikes++;
    if (node.strikes >= STRIKES) this.drop(node, why);
    else this.showNode(node);
  }

  drop(node, why) {
    if (!node.dropped) node.dropped = why;
    this.showNode(node);
  }

  whyNot() {
    return this.nodes.map((n) => `${n.url} ${n.dropped || `lacks ${n.lacks.size} part(s)`}`).join('; ');
  }

  fail(e) {
    if (this.failed) return;
    this.failed = e;
    for (const c of this.controllers) c.abort();
    if (this.settle) this.settle.reject(e);
  }

  /** The content as Blobs: the plaintext after the header, or each file. */
  assemble() {
    const meta = this.meta;
    const type = 'application/octet-stream';
    const whole = new Blob(this.parts, { type });
    this.parts = null;
    if (meta.encrypted) {
      const h = this.header;
      return [{ path: h.name, name: h.name, blob: whole.slice(h.start, h.start + h.length, type) }];
    }
    if (!meta.dir) return [{ path: meta.name, name: meta.name, blob: whole }];
    return meta.files.map((f) => ({
      path: [meta.name, ...f.path].join('/'),
      name: f.path[f.path.length - 1],
      blob: whole.slice(f.offset, f.offset + f.length, type),
    }));
  }

  // ---- What the page shows --------------------------------------------

  offer(files) {
    const list = $('files');
    for (const f of files) {
      const li = document.createElement('li');
      li.dataset.file = f.path;
      f.anchor = document.createElement('a');
      f.anchor.href = URL.createObjectURL(f.blob);
      f.anchor.download = f.name;
      f.anchor.textContent = `Save ${f.path}`;
      f.hashCell = document.createElement('code');
      f.hashCell.className = 'sha256';
      f.hashCell.textContent = 'SHA-256…';
      const size = document.createElement('span');
      size.className = 'size';
      size.textContent = `${f.blob.size}`;
      li.append(f.anchor, ' ', size, ' bytes, SHA-256 ', f.hashCell);
      list.append(li);
    }
  }

  showAbout() {
    const m = this.meta;
    $('about').hidden = false;
    $('file-id').textContent = this.id;
    $('file-name').textContent = m.encrypted ? 'inside the encryption' : m.name;
    $('file-size').textContent = `${m.length} bytes${m.encrypted ? ' encrypted' : ''}`;
    $('file-parts').textContent = `${m.count} of ${m.pieceLength} bytes`;
    $('file-encrypted').textContent = m.encrypted ? 'yes (AES-256-GCM, decrypted here)' : 'no';
    $('bar').hidden = false;
    $('bar').max = Math.max(m.length, 1);
  }

  showNodes() {
    $('nodes').hidden = false;
    const body = $('nodes').tBodies[0];
    for (const node of this.nodes) {
      node.row = body.insertRow();
      node.row.dataset.node = node.url;
      for (const c of ['url', 'parts', 'mib', 'bad', 'state']) node.row.insertCell().className = c;
      this.showNode(node);
    }
  }

  showNode(node) {
    const cells = node.row.cells;
    cells[0].textContent = node.url;
    cells[1].textContent = `${node.parts}`;
    cells[2].textContent = mib(node.bytes);
    cells[3].textContent = `${node.bad}`;
    cells[4].textContent = node.dropped ? `dropped: ${node.dropped}` : node.strikes ? `retrying (${node.strikes} failed)` : 'using';
    node.row.classList.toggle('dropped', !!node.dropped);
  }

  showProgress() {
    const m = this.meta;
    const secs = (performance.now() - this.started) / 1000;
    const rate = this.got / Math.max(secs, 0.001);
    const eta = rate > 0 ? Math.ceil((m.length - this.got) / rate) : 0;
    $('bar').value = this.got;
    $('progress').textContent = `${mib(this.got)} of ${mib(m.length)} MiB, ${mib(rate)} MiB/s, ` +
      `${this.held}/${m.count} parts, ETA ${eta} s`;
  }
}

function reason(e) {
  if (e instanceof Failure) return e.message;
  if (e && e.name === 'AbortError') return 'aborted';
  return 'unreachable (no answer, or not a Zennet node)';
}

function state(kind, message) {
  const el = $('state');
  el.dataset.state = kind;
  el.textContent = message;
}

async function main() {
  let dl;
  try {
    const link = parseLink(location);
    narrowConnections(link.nodes);
    dl = new Download(link);
    await dl.run();
  } catch (e) {
    if (dl) dl.fail(e);
    // Nothing is offered after a failure.
    $('files').replaceChildren();
    state('error', e instanceof Failure ? e.message : `Unexpected error: ${e}`);
  }
}

addEventListener('hashchange', () => location.reload());
main();
