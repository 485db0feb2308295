/**
 * The memory this process may use: a cgroup memory limit (v2 `memory.max`, v1
 * `memory.limit_in_bytes`) when there is one, else the machine's memory.
 */
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

export function availableMemory(): { bytes: number; source: string } {
  const total = totalmem();
  const cgroups = read('/proc/self/cgroup') ?? '';
  const v2 = /^0::(.*)$/m.exec(cgroups)?.[1];
  const v1 = /^\d+:[^:]*\bmemory\b[^:]*:(.*)$/m.exec(cgroups)?.[1];
  const candidates = [
    ...(v2 !== undefined ? [join('/sys/fs/cgroup', v2, 'memory.max'), '/sys/fs/cgroup/memory.max'] : []),
    ...(v1 !== undefined ? [join('/sys/fs/cgroup/memory', v1, 'memory.limit_in_bytes'), '/sys/fs/cgroup/memory/memory.limit_in_bytes'] : []),
  ];
  for (const p of candidates) {
    const v = read(p);
    const n = Number(v);
    if (v && v !== 'max' && Number.isFinite(n) && n > 0 && n < total) return { bytes: n, source: `cgroup memory limit (${p})` };
  }
  return { bytes: total, source: 'the machine' };
}
