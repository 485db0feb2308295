/**
 * An adapter version's identity: the sha256 of its files (each file's name, length and bytes, in
 * name order). Two names with the same files are the same weights; a replaced adapter can never be
 * mistaken for its old version. Digests of directories that can change under us (adapter
 * directories an operator manages) are memoised by each file's inode, size and modification time,
 * and checked again when the weights are loaded.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** The files whose bytes make an adapter (what uploads accept). */
export const DIGESTED_FILES = ['adapter_config.json', 'adapter_model.safetensors', 'tokenizer_config.json', 'tokenizer.json', 'special_tokens_map.json'];

const memo = new Map<string, { stamp: string; digest: string }>();

function stampOf(dir: string, files: string[]): string {
  return files.map((f) => {
    const s = statSync(join(dir, f), { bigint: true });
    return `${f}:${s.ino}:${s.size}:${s.mtimeNs}`;
  }).join('|');
}

function filesOf(dir: string): string[] {
  const present = new Set(readdirSync(dir));
  return DIGESTED_FILES.filter((f) => present.has(f)).sort();
}

/** The digest of the adapter files in `dir` (hex), memoised by file stamps. */
export function adapterDigest(dir: string): string {
  const files = filesOf(dir);
  const stamp = stampOf(dir, files);
  const hit = memo.get(dir);
  if (hit && hit.stamp === stamp) return hit.digest;
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  for (const f of files) {
    const fd = openSync(join(dir, f), 'r');
    try {
      const size = statSync(join(dir, f)).size;
      h.update(`${f}\0${size}\0`);
      let pos = 0;
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, pos);
        if (n === 0) break;
        h.update(buf.subarray(0, n));
        pos += n;
      }
    } finally {
      closeSync(fd);
    }
  }
  const digest = h.digest('hex');
  memo.set(dir, { stamp, digest });
  return digest;
}
