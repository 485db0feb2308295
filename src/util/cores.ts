/**
 * The CPU cores this process may actually use: the CPUs its affinity allows
 * (os.availableParallelism) capped by a cgroup CPU quota (cgroup v2 `cpu.max`, v1
 * `cpu.cfs_quota_us / cpu.cfs_period_us`), as a container limits it. onnxruntime's own default
 * sizes its thread pool differently (measured: one intra-op thread on a 2-core machine), so the
 * count is computed here and passed explicitly.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

export interface Cores {
  count: number;
  /** How the count was found, for the start-up log line. */
  source: string;
}

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/** The CPU quota of the process's cgroup, in cores (null: none). */
function cgroupQuota(): number | null {
  const cgroups = read('/proc/self/cgroup') ?? '';
  // cgroup v2: "0::<path>", the quota in <mount>/<path>/cpu.max as "<quota> <period>" or "max <period>".
  const v2 = /^0::(.*)$/m.exec(cgroups)?.[1];
  if (v2 !== undefined) {
    for (const dir of [join('/sys/fs/cgroup', v2), '/sys/fs/cgroup']) {
      const max = read(join(dir, 'cpu.max'));
      if (max) {
        const [quota, period] = max.split(/\s+/);
        if (quota !== 'max' && Number(period) > 0) return Number(quota) / Number(period);
        if (quota === 'max') break;
      }
    }
  }
  // cgroup v1: the cpu controller's path.
  const v1 = /^\d+:[^:]*\bcpu\b[^:]*:(.*)$/m.exec(cgroups)?.[1];
  if (v1 !== undefined) {
    for (const dir of [join('/sys/fs/cgroup/cpu', v1), '/sys/fs/cgroup/cpu']) {
      const quota = Number(read(join(dir, 'cpu.cfs_quota_us')));
      const period = Number(read(join(dir, 'cpu.cfs_period_us')));
      if (quota > 0 && period > 0) return quota / period;
      if (read(join(dir, 'cpu.cfs_quota_us')) !== null) break;
    }
  }
  return null;
}

export function availableCores(): Cores {
  const affinity = availableParallelism();
  const quota = cgroupQuota();
  if (quota !== null && Math.floor(quota) < affinity) return { count: Math.max(1, Math.floor(quota)), source: `cgroup CPU quota ${quota.toFixed(2)} cores (affinity allows ${affinity})` };
  return { count: affinity, source: `${affinity} CPUs in the process's affinity${quota !== null ? ` (cgroup quota ${quota.toFixed(2)})` : ''}` };
}
