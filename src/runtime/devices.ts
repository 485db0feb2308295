/** The execution providers loraplex can run on (what --device accepts). */
export const DEVICES = ['cpu', 'cuda', 'webgpu'] as const;
export type Device = (typeof DEVICES)[number];
