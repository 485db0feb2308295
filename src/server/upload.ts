/**
 * Adapter uploads into a staging directory: PEFT files as multipart file parts (recognised by their
 * file names), or one .tar.gz/.tgz/.tar/.zip archive. Archive entries with absolute paths, `..`,
 * links or unexpected files are refused; sizes are capped (decompressed, too). Nothing here makes an
 * adapter visible: the caller validates the staging directory and commits it.
 */
import { createWriteStream, rmSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import yauzl from 'yauzl';
import { LoraplexError, StorageFullError, ValidationError } from '../errors.js';

/** Files an adapter directory may hold. */
export const ADAPTER_FILES = new Set(['adapter_config.json', 'adapter_model.safetensors', 'tokenizer_config.json', 'tokenizer.json', 'special_tokens_map.json', 'README.md']);
/** Files that are recognised and refused with a reason. */
const REFUSED: Record<string, string> = {
  'adapter_model.bin': 'adapter_model.bin is a pickle and is not accepted; upload adapter_model.safetensors',
};

export class UploadTooLargeError extends LoraplexError {
  constructor(limit: number) {
    super('upload_too_large', `the upload is larger than the limit of ${limit} bytes (--max-upload-bytes)`, { param: 'file' });
  }
}

/**
 * Any failure while reading an upload is the upload's fault (4xx), unless it already says what it
 * is, or the disk it is written to is full (507: the server's fault).
 */
function asUploadError(err: unknown, what: string): LoraplexError {
  if (err instanceof LoraplexError) return err;
  const full = StorageFullError.of(err, what);
  if (full) return full;
  return new ValidationError(`${what}: ${(err as Error)?.message ?? String(err)}`, 'file');
}

export function archiveKind(filename: string): 'tgz' | 'tar' | 'zip' | null {
  const f = filename.toLowerCase();
  if (f.endsWith('.tar.gz') || f.endsWith('.tgz')) return 'tgz';
  if (f.endsWith('.tar')) return 'tar';
  if (f.endsWith('.zip')) return 'zip';
  return null;
}

/** Checks a file name from a multipart part or an archive entry; returns the base name to write. */
export function checkEntryName(raw: string, where: string, isDir = false): string | null {
  const name = raw.replace(/\\/g, '/');
  if (name.startsWith('/') || /^[A-Za-z]:/.test(name)) throw new ValidationError(`${where}: entry ${JSON.stringify(raw)} has an absolute path`, 'file');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.some((p) => p === '..')) throw new ValidationError(`${where}: entry ${JSON.stringify(raw)} contains '..'`, 'file');
  if (parts.length === 0) return null; // the archive's root directory entry
  if (isDir) {
    if (parts.length > 1) throw new ValidationError(`${where}: entry ${JSON.stringify(raw)} is nested too deep (files at the top or in one folder)`, 'file');
    return null;
  }
  const base = parts[parts.length - 1];
  if (REFUSED[base]) throw new ValidationError(`${where}: ${REFUSED[base]}`, 'file');
  if (parts.length > 2) throw new ValidationError(`${where}: entry ${JSON.stringify(raw)} is nested too deep (files at the top or in one folder)`, 'file');
  if (!ADAPTER_FILES.has(base)) throw new ValidationError(`${where}: unexpected file ${JSON.stringify(raw)}; an adapter holds ${[...ADAPTER_FILES].join(', ')}`, 'file');
  return base;
}

/** Counts bytes through a stream and fails past `limit`. */
class Budget {
  used = 0;
  constructor(readonly limit: number) {}
  take(n: number): void {
    this.used += n;
    if (this.used > this.limit) throw new UploadTooLargeError(this.limit);
  }
}

async function writeCapped(source: AsyncIterable<Buffer | Uint8Array>, path: string, budget: Budget, what: string, onProgress?: () => void): Promise<void> {
  const out = createWriteStream(path, { flags: 'wx' });
  // A write error may come at any time (even after the upload failed and its directory is gone).
  let outError: Error | null = null;
  out.on('error', (e) => (outError = e));
  try {
    for await (const chunk of source) {
      if (outError) throw outError;
      budget.take(chunk.length);
      onProgress?.();
      if (!out.write(chunk)) await once(out, 'drain');
    }
    out.end();
    await finished(out);
  } catch (err) {
    out.destroy();
    throw asUploadError(err, what);
  }
}

/** Writes one plain file part. */
export async function savePart(stream: AsyncIterable<Buffer>, filename: string, dir: string, budget: Budget, seen: Set<string>, onProgress?: () => void): Promise<void> {
  const base = checkEntryName(filename, 'upload');
  if (!base) throw new ValidationError(`upload: file part without a file name`, 'file');
  if (seen.has(base)) throw new ValidationError(`upload: ${base} was sent twice`, 'file');
  seen.add(base);
  await writeCapped(stream, join(dir, base), budget, `upload: ${base}`, onProgress);
}

export async function extractArchive(stream: Readable, filename: string, dir: string, budget: Budget, seen: Set<string>, onProgress?: () => void): Promise<void> {
  const kind = archiveKind(filename)!;
  if (kind === 'zip') {
    // yauzl needs random access: the (size-capped) archive goes to a file next to the staged
    // files first, never into memory whole.
    const path = join(dir, '.upload.zip');
    try {
      await writeCapped(stream, path, budget, filename, onProgress);
      budget.used = 0;
      await extractZip(path, filename, dir, budget, seen);
    } finally {
      rmSync(path, { force: true });
    }
    return;
  }
  const extract = tar.extract();
  const source: Readable = kind === 'tgz' ? stream.pipe(createGunzip()) : stream;
  await new Promise<void>((resolve, reject) => {
    let failed = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      // Stop reading at once (no need to inflate the rest of a hostile archive).
      extract.on('error', () => {});
      source.unpipe(extract);
      source.destroy();
      extract.destroy();
      reject(err);
    };
    extract.on('entry', (header, entry, next) => {
      entry.on('error', () => {});
      try {
        if (header.type === 'directory') {
          checkEntryName(header.name, filename, true);
          entry.resume();
          entry.on('end', next);
          return;
        }
        if (header.type !== 'file') throw new ValidationError(`${filename}: entry ${JSON.stringify(header.name)} is a ${header.type}; only regular files are accepted`, 'file');
        const base = checkEntryName(header.name, filename);
        if (!base) throw new ValidationError(`${filename}: entry ${JSON.stringify(header.name)} has no file name`, 'file');
        if (seen.has(base)) throw new ValidationError(`${filename}: ${base} appears twice`, 'file');
        seen.add(base);
        writeCapped(entry as AsyncIterable<Buffer>, join(dir, base), budget, `${filename}: ${header.name}`, onProgress).then(() => next(), fail);
      } catch (err) {
        fail(err);
      }
    });
    extract.on('finish', () => {
      if (!failed) resolve();
    });
    extract.on('error', (err: Error) => fail(new ValidationError(`${filename}: not a valid tar archive (${err.message})`, 'file')));
    source.on('error', (err) => fail(new ValidationError(`${filename}: not a valid ${kind === 'tgz' ? 'gzip' : 'tar'} archive (${err.message})`, 'file')));
    source.pipe(extract);
  });
}

function extractZip(path: string, filename: string, dir: string, budget: Budget, seen: Set<string>): Promise<void> {
  return new Promise((resolve, reject) => {
    yauzl.open(path, { lazyEntries: true, validateEntrySizes: true, strictFileNames: false, autoClose: true }, (err, zip) => {
      if (err || !zip) return reject(new ValidationError(`${filename}: not a valid zip archive (${err?.message ?? 'unreadable'})`, 'file'));
      const fail = (e: unknown): void => {
        zip.close();
        reject(e);
      };
      zip.on('entry', (entry: yauzl.Entry) => {
        try {
          const isDir = entry.fileName.endsWith('/');
          // Unix mode in the high bits of the external attributes: refuse symlinks and devices.
          const mode = (entry.externalFileAttributes >>> 16) & 0o170000;
          if (mode !== 0 && mode !== 0o100000 && mode !== 0o040000) throw new ValidationError(`${filename}: entry ${JSON.stringify(entry.fileName)} is not a regular file`, 'file');
          const base = checkEntryName(entry.fileName, filename);
          if (isDir || !base) {
            zip.readEntry();
            return;
          }
          if (seen.has(base)) throw new ValidationError(`${filename}: ${base} appears twice`, 'file');
          seen.add(base);
          if (entry.uncompressedSize > budget.limit - budget.used) throw new UploadTooLargeError(budget.limit);
          zip.openReadStream(entry, (e2, rs) => {
            if (e2 || !rs) return fail(new ValidationError(`${filename}: cannot read ${entry.fileName} (${e2?.message})`, 'file'));
            writeCapped(rs, join(dir, base), budget, `${filename}: broken entry ${JSON.stringify(entry.fileName)}`).then(() => zip.readEntry(), fail);
          });
        } catch (e) {
          fail(e);
        }
      });
      zip.on('end', () => resolve());
      zip.on('error', (e: Error) => fail(new ValidationError(`${filename}: broken zip archive (${e.message})`, 'file')));
      zip.readEntry();
    });
  });
}

export function newBudget(limit: number): Budget {
  return new Budget(limit);
}

export type { Budget };
