/**
 * Uploads onto a full disk: a write that fails with ENOSPC (or EDQUOT) is the machine's fault, a 507
 * naming the adapter store's disk, never a 400 blaming the upload. The mapping is checked on a real
 * ENOSPC (writing /dev/full); the whole path on a real full disk — a 1 MiB tmpfs mounted as the
 * adapter store — where the test may mount one (root with CAP_SYS_ADMIN), skipped elsewhere.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ERROR_CATALOG, StorageFullError } from '../../src/errors.js';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { ADMIN, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

function errorOf(f: () => void): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error');
}

describe('a full disk', () => {
  it('ENOSPC and EDQUOT are storage_full (507, a server error); other write errors are not', () => {
    const full = errorOf(() => writeFileSync('/dev/full', 'x'));
    expect(full).toMatchObject({ code: 'ENOSPC' });
    const e = StorageFullError.of(full, 'upload: adapter_model.safetensors');
    expect(e).toMatchObject({ code: 'storage_full', statusCode: 507, type: 'server_error' });
    expect(e!.message).toBe("the adapter store's disk is full (ENOSPC) while writing upload: adapter_model.safetensors; free space on the store's volume (--adapters) and retry");
    expect(ERROR_CATALOG.storage_full.tgiStatus).toBe(507);
    expect(StorageFullError.of(Object.assign(new Error('quota'), { code: 'EDQUOT' }), 'x')).toMatchObject({ code: 'storage_full' });
    expect(StorageFullError.of(errorOf(() => writeFileSync(join(tempDir(), 'no', 'such'), 'x')), 'x')).toBeNull();
    expect(StorageFullError.of(null, 'x')).toBeNull();
  });

  describe('on a real full disk (a 1 MiB tmpfs as the adapter store)', () => {
    const store = tempDir('loraplex-full-store-');
    let mounted = false;
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', store], { stdio: 'ignore' });
      mounted = true;
    } catch {
      // Not root, or no CAP_SYS_ADMIN: the mapping above is what can be checked here.
    }
    let server: RunningServer | undefined;
    afterAll(async () => {
      await server?.close();
      if (mounted) execFileSync('umount', [store]);
      rmSync(store, { recursive: true, force: true });
    });

    it.skipIf(!mounted)('an upload that does not fit is a 507 naming the disk, leaves no staging behind, and fits once space is freed', async () => {
      const tm = tinyQwen(301);
      const adapter = makeTinyAdapter(tm, { seed: 302, r: 16 });
      const form = (): FormData => {
        const f = new FormData();
        f.append('name', 'big');
        for (const name of ['adapter_config.json', 'adapter_model.safetensors']) f.append('file', new Blob([readFileSync(join(adapter.dir, name))]), name);
        return f;
      };
      const weights = readFileSync(join(adapter.dir, 'adapter_model.safetensors')).length;
      server = await startServer(testConfig({ model: tm.dir, adapters: store, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
      await server.ready;
      // Fill the disk but for less than the adapter's weights.
      const { bavail, bsize } = statfsSync(store);
      const filler = join(store, 'filler');
      writeFileSync(filler, Buffer.alloc(Math.max(0, bavail * bsize - Math.floor(weights / 2))));
      expect(statfsSync(store).bavail * bsize).toBeLessThan(weights);
      const post = () => fetch(`${server!.url}/admin/adapters`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` }, body: form() });

      const r = await post();
      const body = (await r.json()) as { error: { message: string; type: string; code: string } };
      expect(r.status, JSON.stringify(body)).toBe(507);
      expect(body.error).toMatchObject({ type: 'server_error', code: 'storage_full' });
      expect(body.error.message).toMatch(/^the adapter store's disk is full \(ENOSPC\) while writing upload: adapter_model\.safetensors/);
      expect(readdirSync(join(store, '.loraplex', 'staging'))).toEqual([]);

      rmSync(filler);
      const again = await post();
      expect(again.status, await again.clone().text()).toBe(201);
      expect(await again.json()).toMatchObject({ name: 'big', rank: 16 });
    }, 300_000);
  });
});
