/**
 * Writes safetensors files tensor by tensor. Used by the demo model, the benchmarks and the test
 * generators, so that large random checkpoints never have to be held in memory at once.
 */
import { closeSync, openSync, renameSync, writeSync } from 'node:fs';
import { BYTES_PER_ELEMENT, toBf16Array, toHalfArray, type SafetensorsDtype } from './safetensors.js';

export interface TensorToWrite {
  name: string;
  shape: readonly number[];
  dtype: SafetensorsDtype;
  /** Called once, when the tensor is written; returns float32 values in row-major order. */
  data: Float32Array | (() => Float32Array);
}


/** Writes `tensors` to `path` atomically (temp file + rename). */
export function writeSafetensors(path: string, tensors: readonly TensorToWrite[], metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    const len = numel * BYTES_PER_ELEMENT[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + len] };
    offset += len;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces to an 8-byte boundary, as the reference implementation does.
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(headerBytes.length));
    writeSync(fd, len);
    writeSync(fd, headerBytes);
    for (const t of tensors) {
      const values = typeof t.data === 'function' ? t.data() : t.data;
      const numel = t.shape.reduce((a, b) => a * b, 1);
      if (values.length !== numel) throw new Error(`tensor ${t.name}: ${values.length} values for shape ${JSON.stringify(t.shape)}`);
      writeSync(fd, encode(values, t.dtype));
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

function encode(values: Float32Array, dtype: SafetensorsDtype): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = dtype === 'F16' ? toHalfArray(values) : toBf16Array(values);
  return new Uint8Array(out.buffer);
}
