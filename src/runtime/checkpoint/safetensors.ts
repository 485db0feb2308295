/**
 * safetensors files, read tensor by tensor: the header is parsed once and each tensor is read from
 * disk on demand with positioned reads, so a multi-gigabyte checkpoint never sits in the JS heap whole.
 * Format: u64 little-endian header length N, N bytes of JSON header, then the raw data block.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { basename } from 'node:path';
import { CheckpointError } from '../../errors.js';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16';
export const BYTES_PER_ELEMENT: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** Headers larger than this are refused: real headers are kilobytes, a few MB for huge sharded models. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

export class SafetensorsFile {
  readonly path: string;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  private fd: number | null;

  private constructor(path: string, fd: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.path = path;
    this.fd = fd;
    this.tensors = tensors;
    this.metadata = metadata;
  }

  /** Opens a file and parses its header; headers above `maxHeaderBytes` are refused unread. */
  static open(path: string, opts: { maxHeaderBytes?: number } = {}): SafetensorsFile {
    const maxHeader = opts.maxHeaderBytes ?? MAX_HEADER_BYTES;
    const name = basename(path);
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      throw new CheckpointError(`${name}: cannot open safetensors file (${(err as Error).message})`, err);
    }
    try {
      const fileSize = fstatSync(fd).size;
      if (fileSize < 8) throw new CheckpointError(`${name}: truncated safetensors file (${fileSize} bytes, no header length)`);
      const lenBuf = Buffer.alloc(8);
      readSync(fd, lenBuf, 0, 8, 0);
      const headerLen = lenBuf.readBigUInt64LE(0);
      if (headerLen > BigInt(maxHeader) || headerLen > BigInt(fileSize - 8)) {
        throw new CheckpointError(
          `${name}: safetensors header length ${headerLen} is impossible (file has ${fileSize} bytes, limit ${maxHeader})`,
        );
      }
      const headerBuf = Buffer.alloc(Number(headerLen));
      readSync(fd, headerBuf, 0, headerBuf.length, 8);
      let header: unknown;
      try {
        header = JSON.parse(headerBuf.toString('utf8'));
      } catch (err) {
        throw new CheckpointError(`${name}: safetensors header is not valid JSON (${(err as Error).message})`, err);
      }
      if (header === null || typeof header !== 'object' || Array.isArray(header)) {
        throw new CheckpointError(`${name}: safetensors header must be a JSON object`);
      }
      const dataStart = 8 + Number(headerLen);
      const dataSize = fileSize - dataStart;
      const tensors = new Map<string, TensorInfo>();
      let metadata: Record<string, string> = {};
      for (const [tensorName, raw] of Object.entries(header as Record<string, unknown>)) {
        if (tensorName === '__metadata__') {
          metadata = (raw ?? {}) as Record<string, string>;
          continue;
        }
        tensors.set(tensorName, parseEntry(name, tensorName, raw, dataStart, dataSize));
      }
      return new SafetensorsFile(path, fd, tensors, metadata);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Reads one tensor and converts it to float32. */
  readFloat32(tensorName: string): Float32Array {
    const info = this.tensors.get(tensorName);
    if (!info) throw new CheckpointError(`${basename(this.path)}: tensor ${tensorName} is missing`);
    if (this.fd === null) throw new Error(`${this.path} is closed`);
    const bytes = Buffer.allocUnsafe(info.byteLength);
    let done = 0;
    while (done < info.byteLength) {
      const n = readSync(this.fd, bytes, done, info.byteLength - done, info.offset + done);
      if (n === 0) throw new CheckpointError(`${basename(this.path)}: tensor ${tensorName} is truncated`);
      done += n;
    }
    return toFloat32(bytes, info.dtype);
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }
}

function parseEntry(file: string, tensorName: string, raw: unknown, dataStart: number, dataSize: number): TensorInfo {
  const where = `${file}: tensor ${tensorName}`;
  if (raw === null || typeof raw !== 'object') throw new CheckpointError(`${where}: header entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (dtype !== 'F32' && dtype !== 'F16' && dtype !== 'BF16') {
    throw new CheckpointError(`${where}: dtype ${String(dtype)} is not supported (expected F32, F16 or BF16)`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new CheckpointError(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[1] < offsets[0]
  ) {
    throw new CheckpointError(`${where}: data_offsets ${JSON.stringify(offsets)} are invalid`);
  }
  const numel = (shape as number[]).reduce((a, b) => a * b, 1);
  const expected = numel * BYTES_PER_ELEMENT[dtype];
  const byteLength = offsets[1] - offsets[0];
  if (byteLength !== expected) {
    throw new CheckpointError(
      `${where}: has ${byteLength} bytes but shape ${JSON.stringify(shape)} of ${dtype} needs ${expected}`,
    );
  }
  if (offsets[1] > dataSize) {
    throw new CheckpointError(
      `${where}: data ends at byte ${offsets[1]} of the data block but the file holds only ${dataSize} (truncated file?)`,
    );
  }
  return { name: tensorName, dtype, shape: shape as number[], offset: dataStart + offsets[0], byteLength };
}

/** Converts little-endian F32/F16/BF16 bytes to a fresh Float32Array. */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  if (dtype === 'F32') {
    if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    return new Float32Array(bytes.slice().buffer);
  }
  const n = bytes.byteLength / 2;
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === 'BF16') {
    const u32 = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u32[i] = view.getUint16(i * 2, true) << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
  }
  return out;
}

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 → IEEE half bits, round to nearest even. */
export function floatToHalf(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float32 → bfloat16 bits, round to nearest even. */
export function floatToBf16(value: number): number {
  f32Scratch[0] = value;
  return bf16Bits(u32Scratch[0]);
}

function bf16Bits(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Bulk float32 → bfloat16 bits. */
export function toBf16Array(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = bf16Bits(bits[i]);
  return out;
}

/** Bulk float32 → IEEE half bits. */
export function toHalfArray(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatToHalf(values[i]);
  return out;
}
