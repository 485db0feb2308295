/**
 * A small ONNX protobuf writer: ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto
 * (raw data or external data) and ValueInfoProto. Enough to express a decoder graph; nothing else.
 *
 * Field numbers follow onnx/onnx.proto (IR version 10). Messages are built bottom-up as lists of
 * byte chunks, so large raw tensors are copied once, when the final model is concatenated.
 */

export const DataType = {
  float: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
} as const;
export type DataTypeName = keyof typeof DataType;

/** A symbolic (string) or fixed (number) dimension. */
export type Dim = number | string;

class ProtoWriter {
  private readonly parts: Uint8Array[] = [];
  private scratch: number[] = [];
  private length = 0;

  private flush(): void {
    if (this.scratch.length > 0) {
      const chunk = Uint8Array.from(this.scratch);
      this.parts.push(chunk);
      this.length += chunk.length;
      this.scratch = [];
    }
  }

  varint(value: number | bigint): void {
    let v = BigInt.asUintN(64, BigInt(value));
    while (v >= 0x80n) {
      this.scratch.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.scratch.push(Number(v));
  }

  tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }

  int(field: number, value: number | bigint): void {
    this.tag(field, 0);
    this.varint(value);
  }

  float(field: number, value: number): void {
    this.tag(field, 5);
    const b = new Uint8Array(new Float32Array([value]).buffer);
    for (const x of b) this.scratch.push(x);
  }

  bytes(field: number, data: Uint8Array): void {
    this.tag(field, 2);
    this.varint(data.length);
    this.flush();
    if (data.length > 0) {
      this.parts.push(data);
      this.length += data.length;
    }
  }

  string(field: number, value: string): void {
    this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, inner: ProtoWriter): void {
    inner.flush();
    this.tag(field, 2);
    this.varint(inner.length);
    this.flush();
    for (const p of inner.parts) this.parts.push(p);
    this.length += inner.length;
  }

  finish(): Uint8Array {
    this.flush();
    const out = new Uint8Array(this.length);
    let offset = 0;
    for (const p of this.parts) {
      out.set(p, offset);
      offset += p.length;
    }
    return out;
  }
}

export interface ExternalLocation {
  location: string;
  offset: number;
  length: number;
}

export interface TensorSpec {
  name: string;
  type: DataTypeName;
  dims: readonly number[];
  /** Inline data (small constants) ... */
  data?: ArrayBufferView;
  /** ... or a range of the external data file (weights). */
  external?: ExternalLocation;
}

function tensorProto(t: TensorSpec): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of t.dims) w.int(1, d);
  w.int(2, DataType[t.type]);
  w.string(8, t.name);
  if (t.external) {
    const entry = (key: string, value: string): ProtoWriter => {
      const e = new ProtoWriter();
      e.string(1, key);
      e.string(2, value);
      return e;
    };
    w.message(13, entry('location', t.external.location));
    w.message(13, entry('offset', String(t.external.offset)));
    w.message(13, entry('length', String(t.external.length)));
    w.int(14, 1); // data_location = EXTERNAL
  } else if (t.data) {
    w.bytes(9, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  } else {
    throw new Error(`tensor ${t.name} has neither data nor an external location`);
  }
  return w;
}

function valueInfo(name: string, type: DataTypeName, shape: readonly Dim[]): ProtoWriter {
  const dims = new ProtoWriter();
  for (const d of shape) {
    const dim = new ProtoWriter();
    if (typeof d === 'number') dim.int(1, d);
    else dim.string(2, d);
    dims.message(1, dim);
  }
  const tensorType = new ProtoWriter();
  tensorType.int(1, DataType[type]);
  tensorType.message(2, dims);
  const typeProto = new ProtoWriter();
  typeProto.message(1, tensorType);
  const w = new ProtoWriter();
  w.string(1, name);
  w.message(2, typeProto);
  return w;
}

/** Attribute values: integer → INT, `{ float }` → FLOAT, string → STRING, number[] → INTS, `{ floats }` → FLOATS, `{ tensor }` → TENSOR. */
export type AttrValue =
  | number
  | string
  | readonly number[]
  | { float: number }
  | { floats: readonly number[] }
  | { tensor: TensorSpec };

function attributeProto(name: string, v: AttrValue): ProtoWriter {
  const w = new ProtoWriter();
  w.string(1, name);
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new Error(`attribute ${name}: use { float } for non-integer ${v}`);
    w.int(3, v);
    w.int(20, 2);
  } else if (typeof v === 'string') {
    w.string(4, v);
    w.int(20, 3);
  } else if (Array.isArray(v)) {
    for (const x of v as readonly number[]) w.int(8, x);
    w.int(20, 7);
  } else if ('float' in v) {
    w.float(2, v.float);
    w.int(20, 1);
  } else if ('floats' in v) {
    for (const x of v.floats) w.float(7, x);
    w.int(20, 6);
  } else if ('tensor' in v) {
    w.message(5, tensorProto(v.tensor));
    w.int(20, 4);
  }
  return w;
}

export interface NodeSpec {
  op: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attrs?: Record<string, AttrValue | undefined>;
  domain?: string;
  name: string;
}

export interface ValueSpec {
  name: string;
  type: DataTypeName;
  shape: readonly Dim[];
}

export interface GraphSpec {
  name: string;
  nodes: readonly NodeSpec[];
  initializers: readonly TensorSpec[];
  inputs: readonly ValueSpec[];
  outputs: readonly ValueSpec[];
}

export interface ModelOptions {
  opset: number;
  msOpset: number;
  producer: string;
  metadata?: Record<string, string>;
}

/** Encodes a whole ModelProto. */
export function encodeModel(graph: GraphSpec, opts: ModelOptions): Uint8Array {
  const g = new ProtoWriter();
  for (const n of graph.nodes) {
    const nw = new ProtoWriter();
    for (const i of n.inputs) nw.string(1, i);
    for (const o of n.outputs) nw.string(2, o);
    nw.string(3, n.name);
    nw.string(4, n.op);
    if (n.domain) nw.string(7, n.domain);
    for (const [k, v] of Object.entries(n.attrs ?? {})) if (v !== undefined) nw.message(5, attributeProto(k, v));
    g.message(1, nw);
  }
  g.string(2, graph.name);
  for (const t of graph.initializers) g.message(5, tensorProto(t));
  for (const v of graph.inputs) g.message(11, valueInfo(v.name, v.type, v.shape));
  for (const v of graph.outputs) g.message(12, valueInfo(v.name, v.type, v.shape));

  const m = new ProtoWriter();
  m.int(1, 10); // ir_version
  m.string(2, opts.producer);
  m.message(7, g);
  const opset = (domain: string, version: number): ProtoWriter => {
    const w = new ProtoWriter();
    w.string(1, domain);
    w.int(2, version);
    return w;
  };
  m.message(8, opset('', opts.opset));
  m.message(8, opset('com.microsoft', opts.msOpset));
  for (const [key, value] of Object.entries(opts.metadata ?? {})) {
    const e = new ProtoWriter();
    e.string(1, key);
    e.string(2, value);
    m.message(14, e);
  }
  return m.finish();
}
