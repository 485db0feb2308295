/**
 * Collects nodes, inputs, outputs and initializers for one ONNX graph. Weights are streamed to an
 * external data file as they are added (never all in memory); small constants are inlined.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { toHalfArray } from '../checkpoint/safetensors.js';
import type { AttrValue, DataTypeName, Dim, NodeSpec, TensorSpec, ValueSpec } from './onnx.js';

/** Initializers at or above this size go to the external data file. */
const EXTERNAL_MIN_BYTES = 1024;
/** External data offsets are aligned so ORT can map tensors without copying. */
const ALIGN = 64;

export type FloatType = 'float' | 'float16';

export class ExternalDataWriter {
  readonly fileName: string;
  private fd: number;
  private offset = 0;

  constructor(path: string, fileName: string) {
    this.fileName = fileName;
    this.fd = openSync(path, 'w');
  }

  write(bytes: Uint8Array): { offset: number; length: number } {
    const pad = (ALIGN - (this.offset % ALIGN)) % ALIGN;
    if (pad) {
      writeSync(this.fd, new Uint8Array(pad));
      this.offset += pad;
    }
    const at = this.offset;
    let done = 0;
    while (done < bytes.byteLength) done += writeSync(this.fd, bytes, done, bytes.byteLength - done);
    this.offset += bytes.byteLength;
    return { offset: at, length: bytes.byteLength };
  }

  get bytesWritten(): number {
    return this.offset;
  }

  close(): void {
    closeSync(this.fd);
  }
}

function asBytes(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

export class GraphBuilder {
  readonly nodes: NodeSpec[] = [];
  readonly inputs: ValueSpec[] = [];
  readonly outputs: ValueSpec[] = [];
  readonly initializers: TensorSpec[] = [];
  /** The float element type of activations and float weights. */
  readonly ft: FloatType;
  private readonly external: ExternalDataWriter | null;
  private counter = 0;

  constructor(ft: FloatType, external: ExternalDataWriter | null) {
    this.ft = ft;
    this.external = external;
  }

  /** A fresh value name with a readable prefix. */
  name(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  input(name: string, type: DataTypeName, shape: readonly Dim[]): string {
    this.inputs.push({ name, type, shape });
    return name;
  }

  output(name: string, type: DataTypeName, shape: readonly Dim[]): void {
    this.outputs.push({ name, type, shape });
  }

  /** Adds a node with one output and returns that output's name. */
  op(op: string, inputs: readonly string[], attrs?: Record<string, AttrValue | undefined>, opts?: { domain?: string; out?: string }): string {
    const out = opts?.out ?? this.name(op.toLowerCase());
    this.nodes.push({ op, inputs, outputs: [out], attrs, domain: opts?.domain, name: `n_${out}` });
    return out;
  }

  /** Adds a node with several outputs ('' for an unused optional output). */
  opMulti(op: string, inputs: readonly string[], outputs: readonly string[], attrs?: Record<string, AttrValue | undefined>, domain?: string): void {
    this.nodes.push({ op, inputs, outputs, attrs, domain, name: `n_${outputs.find((o) => o) ?? this.name(op)}` });
  }

  /** Adds an initializer; large ones are written to the external data file. */
  init(name: string, type: DataTypeName, dims: readonly number[], data: ArrayBufferView): string {
    const bytes = asBytes(data);
    if (this.external && bytes.byteLength >= EXTERNAL_MIN_BYTES) {
      const at = this.external.write(bytes);
      this.initializers.push({ name, type, dims, external: { location: this.external.fileName, ...at } });
    } else {
      this.initializers.push({ name, type, dims, data: bytes.slice() });
    }
    return name;
  }

  /** A float initializer in the graph's float type (converted to fp16 when needed). */
  floatInit(name: string, dims: readonly number[], values: Float32Array): string {
    if (this.ft === 'float') return this.init(name, 'float', dims, values);
    return this.init(name, 'float16', dims, toHalfArray(values));
  }

  private readonly constants = new Map<string, string>();

  /** A shared int64 vector constant (axes, shapes, split sizes). */
  const64(values: readonly number[]): string {
    const key = values.join(',');
    let name = this.constants.get(key);
    if (!name) {
      name = this.int64s(`const_i64_${this.constants.size}`, values);
      this.constants.set(key, name);
    }
    return name;
  }

  int64s(name: string, values: readonly number[]): string {
    return this.init(name, 'int64', [values.length], BigInt64Array.from(values.map((v) => BigInt(v))));
  }

  /** A shared int64 scalar constant, created once per value. */
  int64Scalar(value: number): string {
    return this.sharedInit(`i64_${value < 0 ? `m${-value}` : value}`, 'int64', [], () => BigInt64Array.of(BigInt(value)));
  }

  private readonly named = new Set<string>();

  /** A small constant shared by every node that asks for it by name: created on first use. */
  sharedInit(name: string, type: DataTypeName, dims: readonly number[], data: () => ArrayBufferView): string {
    if (!this.named.has(name)) {
      this.named.add(name);
      this.init(name, type, dims, data());
    }
    return name;
  }
}
