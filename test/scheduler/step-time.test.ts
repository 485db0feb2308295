/** The step-time model: fits measured steps and sizes a step's prompt tokens to a target time. */
import { describe, expect, it } from 'vitest';
import { StepTimeModel } from '../../src/scheduler/step-time.js';
import { prng } from '../../src/util/prng.js';

/** A machine whose steps take fixed + perRow·rows + perToken·tokens ms, ±5% noise. */
function run(m: StepTimeModel, steps: number, cost: [number, number, number], seed: number): void {
  const rand = prng(seed);
  for (let i = 0; i < steps; i++) {
    const rows = Math.floor(rand() * 9);
    // Most steps decode only; some carry a prompt chunk of any size.
    const tokens = rand() < 0.3 ? 1 + Math.floor(rand() * 512) : 0;
    const ms = (cost[0] + cost[1] * rows + cost[2] * tokens) * (0.95 + 0.1 * rand());
    m.observe(rows, tokens, ms);
  }
}

describe('StepTimeModel', () => {
  it('knows nothing before a step with prompt tokens: the configured budget stands', () => {
    const m = new StepTimeModel();
    m.observe(8, 0, 60);
    m.observe(4, 0, 40);
    expect(m.fit()).toBeNull();
    expect(m.prefillBudget(8, 250, 32, 512)).toBe(512);
  });

  it('fits the costs of a noisy machine and sizes the prompt tokens so the step meets the target', () => {
    const m = new StepTimeModel();
    const cost: [number, number, number] = [20, 5, 6.8];
    run(m, 300, cost, 1);
    const [fixed, perRow, perToken] = m.fit()!;
    expect(fixed).toBeCloseTo(20, -1);
    expect(perRow).toBeGreaterThan(4);
    expect(perRow).toBeLessThan(6);
    expect(perToken).toBeGreaterThan(6.5);
    expect(perToken).toBeLessThan(7.1);
    for (const rows of [0, 4, 8]) {
      const tokens = m.prefillBudget(rows, 250, 1, 512);
      const ms = cost[0] + cost[1] * rows + cost[2] * tokens;
      expect(ms, `${rows} rows, ${tokens} tokens`).toBeLessThan(250 * 1.06);
      expect(ms, `${rows} rows, ${tokens} tokens`).toBeGreaterThan(250 * 0.9);
    }
    // Bounds: never below the minimum, never above the configured budget.
    expect(m.prefillBudget(60, 250, 32, 512)).toBe(32);
    expect(m.prefillBudget(0, 1e6, 32, 512)).toBe(512);
  });

  it('follows the machine when it gets slower (another process takes the cores)', () => {
    const m = new StepTimeModel();
    run(m, 200, [20, 5, 2], 2);
    const idle = m.prefillBudget(8, 250, 32, 512);
    run(m, 200, [40, 10, 8], 3);
    const busy = m.prefillBudget(8, 250, 32, 512);
    expect(idle).toBeGreaterThan(90);
    expect(busy).toBeLessThan(25 + 10);
    expect(busy).toBeGreaterThanOrEqual(32);
  });

  it('never takes prompt tokens for free: after a few noisy steps that make them look free, a target still cuts the step', () => {
    const m = new StepTimeModel();
    // A small model: one 110-token prompt step that was faster than the decode step after it.
    m.observe(0, 110, 1);
    m.observe(1, 0, 3);
    expect(m.fit()![2]).toBeLessThan(0); // least squares alone says a prompt token costs nothing
    // An unreachable target still gives the smallest chunk; a reachable one charges each prompt
    // token what prompt steps cost on average (1 ms / 110 tokens), not nothing.
    expect(m.prefillBudget(0, 1e-6, 32, 512)).toBe(32);
    expect(m.prefillBudget(1, 1e-6, 32, 512)).toBe(32);
    expect(m.prefillBudget(0, 3, 1, 512)).toBeLessThanOrEqual(2 * 110);
  });

  it('ignores times that are not finite', () => {
    const m = new StepTimeModel();
    run(m, 100, [20, 5, 6.8], 4);
    const before = m.prefillBudget(8, 250, 1, 512);
    m.observe(8, 100, Number.NaN);
    m.observe(8, 100, Number.POSITIVE_INFINITY);
    expect(m.prefillBudget(8, 250, 1, 512)).toBe(before);
  });
});
