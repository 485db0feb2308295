/**
 * Progress for long work (model builds, checkpoint writing, benchmarks), on stderr so stdout stays
 * machine-readable. A live bar on a terminal; otherwise a line at every 10%.
 */
import cliProgress from 'cli-progress';

export type Progress = (done: number, total: number, label?: string) => void;

export function progressBar(title: string, stream: NodeJS.WriteStream = process.stderr): Progress & { stop(): void } {
  let bar: cliProgress.SingleBar | null = null;
  let lastDecile = -1;
  const fn = ((done: number, total: number, label = '') => {
    if (stream.isTTY) {
      if (!bar) {
        bar = new cliProgress.SingleBar(
          { format: `${title} [{bar}] {percentage}% {value}/{total} {label}`, stream, hideCursor: true, clearOnComplete: false },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0, { label });
      }
      bar.setTotal(total);
      bar.update(done, { label });
      if (done >= total) fn.stop();
      return;
    }
    const decile = Math.floor((done / total) * 10);
    if (decile !== lastDecile) {
      lastDecile = decile;
      stream.write(`${title}: ${Math.round((done / total) * 100)}% (${done}/${total})${label ? ` ${label}` : ''}\n`);
    }
  }) as Progress & { stop(): void };
  fn.stop = () => {
    bar?.stop();
    bar = null;
  };
  return fn;
}
