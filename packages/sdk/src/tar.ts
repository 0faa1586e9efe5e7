/**
 * A minimal tar (ustar + PAX) writer and reader for `files.sync`: regular files, directories and symlinks with
 * their modes and mtimes. Web APIs only (Uint8Array, ReadableStream, TextEncoder), so it runs wherever the SDK runs.
 *
 * Why not a package: the small runtime-neutral ones (nanotar) write neither symlinks nor names over 100 bytes, and
 * the reader must treat every byte as hostile (it unpacks what a sandbox sent), which is easier to vouch for in
 * ~300 lines of our own than in a dependency.
 *
 * What is written: one 512-byte ustar header per entry, preceded by a PAX extended header ('x') only when ustar
 * cannot say it: a path or link target over 100 bytes, an mtime with milliseconds or before 1970, a size of 8 GiB
 * or more. GNU tar (the guest's) reads all of that. What is read: ustar, PAX ('x'; 'g' is skipped), GNU long
 * names ('L', 'K') and base-256 numbers, which is what GNU tar writes with --format=posix or gnu.
 */

export type TarEntryType = "file" | "directory" | "symlink";

export interface TarEntryHeader {
  /** Relative path with '/' separators, without a trailing '/' (also for directories). */
  path: string;
  type: TarEntryType;
  /** Permission bits (0o7777 at most). */
  mode: number;
  /** Milliseconds since the epoch; kept to the millisecond (through PAX). */
  mtimeMs: number;
  /** The content's length; 0 for directories and symlinks. */
  size: number;
  /** A symlink's target, as stored (not resolved). */
  linkTarget?: string;
}

export interface TarEntry extends TarEntryHeader {
  data: Uint8Array;
}

/** What the reader yields: also the kinds it recognises but that sync does not unpack (hard links, devices, fifos). */
export interface ReadTarEntry extends Omit<TarEntry, "type"> {
  type: TarEntryType | "hardlink" | "other";
}

/** A damaged or hostile archive: bad checksum, truncated, oversized headers, names that are not UTF-8. */
export class TarFormatError extends Error {
  override name = "TarFormatError";
}

const BLOCK = 512;
/** The two zero blocks that end an archive. */
export const TAR_END_OF_ARCHIVE = new Uint8Array(2 * BLOCK);
/** ustar's size field holds 11 octal digits. */
const MAX_USTAR_SIZE = 0o77777777777;
const MAX_USTAR_MTIME_S = 0o77777777777;
/** Bound on one PAX or GNU long-name header's data: real ones are a few hundred bytes. */
const MAX_META_BYTES = 1024 * 1024;

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

const TYPEFLAG: Record<TarEntryType, string> = { file: "0", directory: "5", symlink: "2" };

/** The zero blocks that pad `size` bytes of content to a whole block. */
export function tarPadding(size: number): Uint8Array {
  const rest = size % BLOCK;
  return new Uint8Array(rest === 0 ? 0 : BLOCK - rest);
}

/** The header block(s) of one entry: a PAX header when ustar cannot carry the fields, then the ustar header. */
export function tarHeader(entry: TarEntryHeader): Uint8Array {
  if (!Number.isInteger(entry.mode) || entry.mode < 0 || entry.mode > 0o7777) throw new RangeError(`invalid mode for ${entry.path}: ${entry.mode}`);
  const size = entry.type === "file" ? entry.size : 0;
  const name = entry.type === "directory" ? `${entry.path}/` : entry.path;
  const nameBytes = encoder.encode(name);
  const linkBytes = encoder.encode(entry.linkTarget ?? "");
  const mtimeMs = Math.round(entry.mtimeMs);
  const mtimeS = Math.floor(mtimeMs / 1000);

  const pax: Array<[string, string]> = [];
  if (nameBytes.length > 100) pax.push(["path", name]);
  if (linkBytes.length > 100) pax.push(["linkpath", entry.linkTarget!]);
  if (mtimeMs % 1000 !== 0 || mtimeS < 0 || mtimeS > MAX_USTAR_MTIME_S) pax.push(["mtime", formatPaxTime(mtimeMs)]);
  if (size > MAX_USTAR_SIZE) pax.push(["size", String(size)]);

  const ustar = ustarBlock({
    name: nameBytes.length > 100 ? asciiFallback(name, 100) : nameBytes,
    mode: entry.mode,
    size: size > MAX_USTAR_SIZE ? 0 : size,
    mtimeS: Math.min(Math.max(mtimeS, 0), MAX_USTAR_MTIME_S),
    typeflag: TYPEFLAG[entry.type],
    linkname: linkBytes.length > 100 ? asciiFallback(entry.linkTarget!, 100) : linkBytes,
  });
  if (pax.length === 0) return ustar;
  const records = encoder.encode(pax.map(([key, value]) => paxRecord(key, value)).join(""));
  const paxHeader = ustarBlock({
    name: asciiFallback(`PaxHeader/${name}`, 100),
    mode: 0o644,
    size: records.length,
    mtimeS: 0,
    typeflag: "x",
    linkname: new Uint8Array(0),
  });
  return concat([paxHeader, records, tarPadding(records.length), ustar]);
}

/** A whole archive in memory (for small trees and tests; sync streams with `tarStream`). */
export function createTar(entries: Iterable<TarEntry>): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const entry of entries) parts.push(tarHeader(entry), entry.data, tarPadding(entry.data.length));
  parts.push(TAR_END_OF_ARCHIVE);
  return concat(parts);
}

/** Small entries are gathered into chunks of about this size: one chunk per tiny file would cost more than the file. */
const STREAM_CHUNK_BYTES = 1024 * 1024;

/**
 * An archive as a stream, pulling entries from `entries` as it is read (so only what is in flight is held). An
 * entry's `size` is taken from its data: a file that changed size after it was listed is still archived whole.
 */
export function tarStream(entries: AsyncIterable<TarEntry>): ReadableStream<Uint8Array> {
  const iterator = entries[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const parts: Uint8Array[] = [];
      let gathered = 0;
      while (gathered < STREAM_CHUNK_BYTES) {
        const next = await iterator.next();
        if (next.done) {
          parts.push(TAR_END_OF_ARCHIVE);
          controller.enqueue(concat(parts));
          controller.close();
          return;
        }
        const entry = { ...next.value, size: next.value.type === "file" ? next.value.data.length : 0 };
        const header = tarHeader(entry);
        if (entry.size >= STREAM_CHUNK_BYTES) {
          // A large file goes as it is, not copied into a gathered chunk.
          parts.push(header);
          controller.enqueue(concat(parts));
          controller.enqueue(entry.data);
          controller.enqueue(tarPadding(entry.size));
          return;
        }
        parts.push(header, entry.data, tarPadding(entry.size));
        gathered += header.length + entry.size + 512;
      }
      controller.enqueue(concat(parts));
    },
    async cancel(reason) {
      await iterator.return?.(reason);
    },
  });
}

export interface ReadTarOptions {
  /** Refuse an entry whose content is larger (its content is held in memory whole). Default 4 GiB. */
  maxEntryBytes?: number;
}

/**
 * The entries of an archive, each with its whole content. Checks every header's checksum, refuses names that are
 * not UTF-8 or hold a NUL, and bounds what a header can make it allocate. Names are returned as written (a
 * trailing '/' removed): the caller decides which ones it accepts.
 */
export async function* readTar(source: ReadableStream<Uint8Array> | Uint8Array, options: ReadTarOptions = {}): AsyncGenerator<ReadTarEntry> {
  const maxEntryBytes = options.maxEntryBytes ?? 4 * 1024 ** 3;
  const input = new ByteReader(source);
  let pax: Map<string, string> = new Map();
  let gnuLongName: string | undefined;
  let gnuLongLink: string | undefined;
  try {
    for (;;) {
      const block = await input.read(BLOCK);
      if (block === undefined) return; // some writers end without the zero blocks
      if (block.every((byte) => byte === 0)) return;
      const header = parseUstarBlock(block);
      const size = header.typeflag === "x" || header.typeflag === "g" || header.typeflag === "L" || header.typeflag === "K" ? header.size : paxSize(pax) ?? header.size;
      const isMeta = "xgLK".includes(header.typeflag);
      if (isMeta && size > MAX_META_BYTES) throw new TarFormatError(`an extended header of ${size} bytes`);
      if (!isMeta && size > maxEntryBytes) throw new TarFormatError(`an entry of ${size} bytes (more than the ${maxEntryBytes} allowed)`);
      const data = await input.read(size);
      if (data === undefined) throw new TarFormatError("the archive ends in the middle of an entry");
      await input.skip(tarPadding(size).length);

      if (header.typeflag === "x") {
        pax = parsePaxRecords(data);
        continue;
      }
      if (header.typeflag === "g") continue; // global defaults: GNU tar writes none; nothing sync needs
      if (header.typeflag === "L") {
        gnuLongName = decodeName(trimNul(data));
        continue;
      }
      if (header.typeflag === "K") {
        gnuLongLink = decodeName(trimNul(data));
        continue;
      }

      let path = pax.get("path") ?? gnuLongName ?? header.name;
      const linkTarget = pax.get("linkpath") ?? gnuLongLink ?? header.linkname;
      if (path === undefined) throw new TarFormatError("a name in the archive is not UTF-8");
      const mtimeMs = pax.has("mtime") ? parsePaxTime(pax.get("mtime")!) : header.mtimeS * 1000;
      pax = new Map();
      gnuLongName = gnuLongLink = undefined;
      const type = typeOfFlag(header.typeflag, path);
      if (path.endsWith("/")) path = path.replace(/\/+$/, "");
      yield {
        path,
        type,
        mode: header.mode & 0o7777,
        mtimeMs,
        size: type === "file" ? size : 0,
        ...(type === "symlink" || type === "hardlink" ? { linkTarget: linkTarget ?? badName() } : {}),
        data: type === "file" ? data : new Uint8Array(0),
      };
    }
  } finally {
    await input.close();
  }
}

// --- writing ---

interface UstarFields {
  name: Uint8Array;
  mode: number;
  size: number;
  mtimeS: number;
  typeflag: string;
  linkname: Uint8Array;
}

function ustarBlock(fields: UstarFields): Uint8Array {
  const block = new Uint8Array(BLOCK);
  block.set(fields.name.subarray(0, 100), 0);
  writeOctal(block, 100, 8, fields.mode);
  writeOctal(block, 108, 8, 0); // uid: extracted as the extracting user (--no-same-owner)
  writeOctal(block, 116, 8, 0); // gid
  writeOctal(block, 124, 12, fields.size);
  writeOctal(block, 136, 12, fields.mtimeS);
  block.fill(0x20, 148, 156); // the checksum is computed with its own field as spaces
  block[156] = fields.typeflag.charCodeAt(0);
  block.set(fields.linkname.subarray(0, 100), 157);
  block.set(encoder.encode("ustar\u000000"), 257);
  let sum = 0;
  for (const byte of block) sum += byte;
  writeOctal(block, 148, 7, sum);
  block[155] = 0x20;
  return block;
}

/** `width - 1` octal digits and a NUL. */
function writeOctal(block: Uint8Array, offset: number, width: number, value: number): void {
  const digits = value.toString(8).padStart(width - 1, "0");
  if (digits.length > width - 1) throw new RangeError(`${value} does not fit a ${width}-byte tar field`);
  block.set(encoder.encode(digits), offset);
  block[offset + width - 1] = 0;
}

/** "LEN key=value\n", where LEN counts the whole record, itself included. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bodyLength = encoder.encode(body).length;
  let length = bodyLength + 1;
  while (String(length).length + bodyLength !== length) length = String(length).length + bodyLength;
  return `${length}${body}`;
}

/** Seconds with the milliseconds as decimals, e.g. "1700000000.123" or "-1.5". */
function formatPaxTime(mtimeMs: number): string {
  const sign = mtimeMs < 0 ? "-" : "";
  const abs = Math.abs(mtimeMs);
  const seconds = Math.floor(abs / 1000);
  const millis = abs % 1000;
  return millis === 0 ? `${sign}${seconds}` : `${sign}${seconds}.${String(millis).padStart(3, "0")}`;
}

/** A header name field for a name that lives in the PAX header: readers that know PAX ignore it. */
function asciiFallback(name: string, width: number): Uint8Array {
  return encoder.encode(name.replace(/[^\x20-\x7e]/g, "_").slice(-width));
}

function concat(parts: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

// --- reading ---

interface UstarHeader {
  /** Undefined when not UTF-8: fine if a PAX or GNU long name replaces it (writers cut long names mid-character). */
  name: string | undefined;
  mode: number;
  size: number;
  mtimeS: number;
  typeflag: string;
  linkname: string | undefined;
}

function parseUstarBlock(block: Uint8Array): UstarHeader {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  const stored = readNumber(block, 148, 8);
  if (stored !== sum) throw new TarFormatError("a tar header's checksum does not match (not a tar archive, or damaged)");
  const magic = new TextDecoder().decode(block.subarray(257, 263));
  const isUstar = magic === "ustar\u0000";
  const prefix = isUstar ? maybeUtf8(trimNul(block.subarray(345, 500))) : "";
  const name = maybeUtf8(trimNul(block.subarray(0, 100)));
  return {
    name: prefix === undefined || name === undefined ? undefined : prefix ? `${prefix}/${name}` : name,
    mode: readNumber(block, 100, 8),
    size: readNumber(block, 124, 12),
    mtimeS: readNumber(block, 136, 12),
    typeflag: block[156] === 0 ? "0" : String.fromCharCode(block[156]!),
    linkname: maybeUtf8(trimNul(block.subarray(157, 257))),
  };
}

/** An octal field (ending in NUL or space), or GNU's base-256 (first byte 0x80) for values that do not fit. */
function readNumber(block: Uint8Array, offset: number, width: number): number {
  const field = block.subarray(offset, offset + width);
  if (field[0] === 0x80) {
    let value = 0;
    for (let i = 1; i < width; i++) value = value * 256 + field[i]!;
    if (!Number.isSafeInteger(value)) throw new TarFormatError("a base-256 tar number too large");
    return value;
  }
  const text = new TextDecoder().decode(field).replace(/[\0 ]+$/, "").replace(/^ +/, "");
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`a tar number field holds ${JSON.stringify(text)}`);
  return parseInt(text, 8);
}

function trimNul(bytes: Uint8Array): Uint8Array {
  const end = bytes.indexOf(0);
  return end === -1 ? bytes : bytes.subarray(0, end);
}

function maybeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return undefined;
  }
}

function decodeName(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new TarFormatError("a name in the archive is not UTF-8");
  }
}

function parsePaxRecords(data: Uint8Array): Map<string, string> {
  const records = new Map<string, string>();
  let offset = 0;
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset);
    if (space === -1) throw new TarFormatError("a malformed PAX record");
    const length = Number(new TextDecoder().decode(data.subarray(offset, space)));
    if (!Number.isInteger(length) || length <= space - offset + 1 || offset + length > data.length || data[offset + length - 1] !== 0x0a) {
      throw new TarFormatError("a malformed PAX record length");
    }
    const record = decodeName(data.subarray(space + 1, offset + length - 1));
    const equals = record.indexOf("=");
    if (equals <= 0) throw new TarFormatError("a PAX record without a key");
    records.set(record.slice(0, equals), record.slice(equals + 1));
    offset += length;
  }
  for (const key of ["path", "linkpath"]) {
    if (records.get(key)?.includes("\0")) throw new TarFormatError(`a PAX ${key} holds a NUL`);
  }
  return records;
}

function paxSize(pax: Map<string, string>): number | undefined {
  const text = pax.get("size");
  if (text === undefined) return undefined;
  if (!/^[0-9]{1,16}$/.test(text) || !Number.isSafeInteger(Number(text))) throw new TarFormatError(`a PAX size of ${JSON.stringify(text)}`);
  return Number(text);
}

/** PAX time: decimal seconds, any number of fraction digits; kept to the millisecond. */
function parsePaxTime(text: string): number {
  const match = /^(-?)([0-9]{1,15})(?:\.([0-9]*))?$/.exec(text);
  if (!match) throw new TarFormatError(`a PAX time of ${JSON.stringify(text)}`);
  const millis = Number(match[2]) * 1000 + Number(((match[3] ?? "") + "000").slice(0, 3));
  return match[1] === "-" ? -millis : millis;
}

function badName(): never {
  throw new TarFormatError("a link target in the archive is not UTF-8");
}

function typeOfFlag(flag: string, name: string): ReadTarEntry["type"] {
  switch (flag) {
    case "0":
    case "7":
      // Old (pre-POSIX) writers mark directories only by the trailing '/'.
      return name.endsWith("/") ? "directory" : "file";
    case "5":
      return "directory";
    case "2":
      return "symlink";
    case "1":
      return "hardlink";
    default:
      return "other";
  }
}

/** Exact-length reads over a byte stream (or one array), keeping at most one unread chunk. */
class ByteReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  #chunk: Uint8Array;
  #done = false;

  constructor(source: ReadableStream<Uint8Array> | Uint8Array) {
    if (source instanceof Uint8Array) {
      this.#chunk = source;
      this.#done = true;
    } else {
      this.#reader = source.getReader();
      this.#chunk = new Uint8Array(0);
    }
  }

  /** Exactly `length` bytes, or undefined when the input ends first (an end before any byte is a clean end). */
  async read(length: number): Promise<Uint8Array | undefined> {
    if (this.#chunk.length >= length) return this.#take(length);
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      if (this.#chunk.length === 0 && !(await this.#fill())) return undefined;
      const piece = this.#take(Math.min(length - filled, this.#chunk.length));
      out.set(piece, filled);
      filled += piece.length;
    }
    return out;
  }

  async skip(length: number): Promise<void> {
    if (length > 0 && (await this.read(length)) === undefined) throw new TarFormatError("the archive ends in the middle of its padding");
  }

  async close(): Promise<void> {
    await this.#reader?.cancel().catch(() => undefined);
  }

  #take(length: number): Uint8Array {
    const piece = this.#chunk.subarray(0, length);
    this.#chunk = this.#chunk.subarray(length);
    return piece;
  }

  async #fill(): Promise<boolean> {
    while (!this.#done) {
      const next = await this.#reader!.read();
      if (next.done) {
        this.#done = true;
        break;
      }
      if (next.value.length > 0) {
        this.#chunk = next.value;
        return true;
      }
    }
    return false;
  }
}
